"""A real full disk under the real broker: the data dir lives on a small
tmpfs that the test fills. QoS 1/2 PUBLISHes are refused (v5 PUBACK 0x83)
while writes fail, QoS 0 keeps flowing, $SYS shows the storage unhealthy,
and everything recovers by itself once space is freed. Needs permission to
mount a tmpfs (root, as in CI); skipped otherwise."""
import os
import subprocess
import tempfile
import time
import unittest

import paho.mqtt.client as mqtt

from harness import Broker, PahoClient, id_on, run_cli, sys_at_least


class DiskFull(unittest.TestCase):
    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="fleetmq-smallfs-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", self.mnt], capture_output=True)
        if r.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest("cannot mount a tmpfs here: " + r.stderr.decode().strip())
        self.broker = Broker("--workers=2", "--sys_interval=1", "--storage.retry_interval_ms=100",
                             "--storage.min_free_bytes=4194304")
        self.broker.data_dir = os.path.join(self.mnt, "data")
        self.broker.start()

    def tearDown(self):
        if hasattr(self, "broker"):
            try:
                self.broker.close()
            finally:
                subprocess.run(["umount", "-l", self.mnt])
                os.rmdir(self.mnt)

    def sys(self, topic):
        r = run_cli(["mosquitto_sub", "-p", str(self.broker.port), "-t", "$SYS/broker/" + topic, "-C", "1", "-W", "5"])
        return r.stdout.strip()

    def test_full_disk_refuses_qos1_serves_qos0_and_recovers(self):
        port = self.broker.port
        # The durable subscriber on worker 0 (its queue is what fails to be
        # written), the publisher on worker 1, whose own writer has nothing
        # to write: it must refuse all the same (one disk, one health).
        sub = PahoClient(port, client_id=id_on(0, "durable-sub"), clean=False, session_expiry=3600)
        sub.subscribe("disk/#", 1)
        pub = PahoClient(port, client_id=id_on(1, "disk-pub"))
        pub.publish("disk/ok", b"before", qos=1)
        self.assertEqual(sub.get().payload, b"before")

        # Fill the filesystem completely.
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        # Publish until the broker notices (RocksDB may still have room in
        # its current WAL block for a few writes).
        refused = None
        for i in range(2000):
            info = pub.c.publish("disk/x", b"x" * 4096, qos=1)
            info.wait_for_publish(timeout=5)
            self.assertTrue(info.is_published())
            if self.sys("storage/healthy") == "0":
                refused = i
                break
        self.assertIsNotNone(refused, "storage never reported a failed write")
        # QoS 1 is now refused: paho 1.6 reports PUBACK reason codes only
        # through on_publish, so read the broker's own counter.
        before = int(self.sys("publish/messages/refused_storage") or 0)
        pub.c.publish("disk/x", b"refused", qos=1).wait_for_publish(timeout=5)
        after = sys_at_least(port, "$SYS/broker/publish/messages/refused_storage", before + 1, timeout=10)
        self.assertGreater(after, before)
        # QoS 0 still flows to an online subscriber.
        watcher = PahoClient(port, client_id="watcher")
        watcher.subscribe("live/#", 0)
        pub.publish("live/q0", b"still served", qos=0)
        self.assertEqual(watcher.get().payload, b"still served")
        self.assertIn("storage: write of", self.broker.read_log())

        # Free the space: the broker recovers by itself.
        os.remove(filler)
        deadline = time.time() + 15
        while time.time() < deadline and self.sys("storage/healthy") != "1":
            time.sleep(0.2)
        self.assertEqual(self.sys("storage/healthy"), "1")
        pub.publish("disk/after", b"after", qos=1)
        got = [m.payload for m in sub.get_all(1000, timeout=5) if m.topic == "disk/after"]
        self.assertEqual(got[-1:], [b"after"])
        self.assertIn("writes succeed again", self.broker.read_log())
        for c in (sub, pub, watcher):
            c.disconnect()


if __name__ == "__main__":
    unittest.main(verbosity=2)
