"""Integration tests: the real fleetmq binary driven by real MQTT clients
(mosquitto_pub/mosquitto_sub from mosquitto-clients and python3-paho-mqtt),
over protocol 3.1.1 and 5."""
import socket
import struct
import subprocess
import threading
import time
import unittest

from harness import BrokerTest, Broker, PahoClient, SubProcess, mqtt5_connect, mqtt5_publish, read_packet, run_cli, sys_at_least, FLEETMQ
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class PubSub(BrokerTest):
    flags = ("--sys_interval=1",)

    def test_mosquitto_clients_qos_0_1_2_both_versions(self):
        for version in ("mqttv311", "mqttv5"):
            for qos in (0, 1, 2):
                topic = "it/%s/%d" % (version, qos)
                sub = SubProcess(["-p", str(self.port), "-V", version, "-q", str(qos),
                                  "-t", topic, "-C", "3", "-W", "10", "-v"])
                for i in range(3):
                    r = run_cli(["mosquitto_pub", "-p", str(self.port), "-V", version, "-q", str(qos),
                                 "-t", topic, "-m", "m%d" % i])
                    self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(sub.lines(), ["%s m%d" % (topic, i) for i in range(3)], version)

    def test_paho_qos_flows_v311_and_v5(self):
        for v5 in (False, True):
            sub = self.client(client_id="s%d" % v5, v5=v5)
            pub = self.client(client_id="p%d" % v5, v5=v5)
            sub.subscribe("flow/#", 2)
            for qos in (0, 1, 2):
                pub.publish("flow/%d" % qos, b"x%d" % qos, qos=qos)
            got = sorted((m.topic, m.qos, m.payload) for m in sub.get_all(3))
            self.assertEqual(got, [("flow/0", 0, b"x0"), ("flow/1", 1, b"x1"), ("flow/2", 2, b"x2")])

    def test_retained_set_and_clear(self):
        pub = self.client(client_id="rp")
        pub.publish("ret/a", b"kept", qos=1, retain=True)
        s1 = self.client(client_id="r1", v5=False)
        s1.subscribe("ret/#", 1)
        m = s1.get()
        self.assertEqual((m.topic, m.payload, m.retain), ("ret/a", b"kept", True))
        pub.publish("ret/a", b"", qos=1, retain=True)
        self.assertEqual(s1.get().payload, b"")  # the clear is forwarded live
        s2 = self.client(client_id="r2")
        s2.subscribe("ret/#", 1)
        # Nothing retained is left: the first message s2 gets is a live one
        # published after its SUBACK (a retained one would have come first).
        pub.publish("ret/live", b"sentinel", qos=1)
        m = s2.get()
        self.assertEqual((m.topic, m.payload, m.retain), ("ret/live", b"sentinel", False))
        r = run_cli(["mosquitto_pub", "-p", str(self.port), "-t", "ret/b", "-m", "cli", "-r", "-q", "1"])
        self.assertEqual(r.returncode, 0)
        r = run_cli(["mosquitto_sub", "-p", str(self.port), "-t", "ret/b", "-C", "1", "-W", "5", "--retained-only"])
        self.assertEqual(r.stdout.strip(), "cli")

    def test_will_on_abrupt_close_not_on_disconnect(self):
        watcher = self.client(client_id="watch")
        watcher.subscribe("wills/#", 1)
        dev = PahoClient(self.port, client_id="dev", will=("wills/dev", b"offline", 1, False))
        dev.kill()
        m = watcher.get()
        self.assertEqual((m.topic, m.payload), ("wills/dev", b"offline"))
        polite = PahoClient(self.port, client_id="polite", will=("wills/polite", b"offline", 1, False))
        polite.disconnect()
        # A message published after the clean DISCONNECT is the next one the
        # watcher gets: no will came before it.
        self.client(client_id="sentinel").publish("wills/sentinel", b"after", qos=1)
        m = watcher.get()
        self.assertEqual((m.topic, m.payload), ("wills/sentinel", b"after"))

    def test_persistent_session_resume_with_queued_messages(self):
        for v5 in (False, True):
            cid = "persist-%d" % v5
            kw = {"session_expiry": 3600} if v5 else {}
            s = PahoClient(self.port, client_id=cid, v5=v5, clean=False, **kw)
            s.subscribe("queue/%d" % v5, 1)
            s.disconnect()
            pub = self.client(client_id="qp%d" % v5)
            for i in range(20):
                pub.publish("queue/%d" % v5, b"%d" % i, qos=1)
            s = self.client(client_id=cid, v5=v5, clean=False, **kw)
            self.assertTrue(s.flags["session present"] if isinstance(s.flags, dict) else s.flags.session_present)
            got = [m.payload for m in s.get_all(20)]
            self.assertEqual(got, [b"%d" % i for i in range(20)])

    def test_shared_subscription_splits_the_load(self):
        a = self.client(client_id="wa")
        b = self.client(client_id="wb")
        a.subscribe("$share/g/work/#", 1)
        b.subscribe("$share/g/work/#", 1)
        pub = self.client(client_id="wp")
        for i in range(10):
            pub.publish("work/x", b"%d" % i, qos=1)
        ga = a.get_all(5)
        gb = b.get_all(5)
        self.assertEqual(len(ga), 5)
        self.assertEqual(len(gb), 5)
        self.assertEqual(sorted(int(m.payload) for m in ga + gb), list(range(10)))

    def test_topic_alias_from_client(self):
        sub = self.client(client_id="as")
        sub.subscribe("alias/long/topic", 0)
        pub = self.client(client_id="ap")
        p = Properties(PacketTypes.PUBLISH)
        p.TopicAlias = 5
        pub.publish("alias/long/topic", b"first", properties=p)
        p2 = Properties(PacketTypes.PUBLISH)
        p2.TopicAlias = 5
        pub.publish("", b"second", properties=p2)
        got = sub.get_all(2)
        self.assertEqual([(m.topic, m.payload) for m in got],
                         [("alias/long/topic", b"first"), ("alias/long/topic", b"second")])

    def test_receive_maximum_towards_client_and_properties_pass_through(self):
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = 1
        sub = self.client(client_id="rm", connect_props=props)
        sub.subscribe("rm/t", 1, sub_id=42)
        pub = self.client(client_id="rmp")
        pp = Properties(PacketTypes.PUBLISH)
        pp.ResponseTopic = "resp/rm"
        pp.CorrelationData = b"\x01\x02"
        pp.UserProperty = [("k", "v")]
        for i in range(30):
            pub.publish("rm/t", b"%d" % i, qos=1, properties=pp)
        got = sub.get_all(30)
        self.assertEqual([m.payload for m in got], [b"%d" % i for i in range(30)])
        m = got[0]
        self.assertEqual(m.properties.ResponseTopic, "resp/rm")
        self.assertEqual(m.properties.CorrelationData, b"\x01\x02")
        self.assertEqual(m.properties.UserProperty, [("k", "v")])
        self.assertEqual(m.properties.SubscriptionIdentifier, [42])

    def test_receive_maximum_one_holds_the_next_publish_until_puback(self):
        """A raw v5 subscriber with Receive Maximum 1 that withholds its
        PUBACK gets exactly one PUBLISH; the next comes only after the ack."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        props = bytes([0x21, 0, 1])  # Receive Maximum = 1
        body = bytes([0, 4]) + b"MQTT" + bytes([5, 2, 0, 30]) + bytes([len(props)]) + props + bytes([0, 2]) + b"rw"
        s.sendall(bytes([0x10, len(body)]) + body)
        first, _ = read_packet(s)
        self.assertEqual(first, 0x20)
        s.sendall(bytes([0x82, 10, 0, 1, 0, 0, 4]) + b"rw/t" + bytes([1]))  # SUBSCRIBE rw/t QoS 1
        first, _ = read_packet(s)
        self.assertEqual(first, 0x90)
        pub = self.client(client_id="rwp")
        for i in range(3):
            pub.publish("rw/t", b"%d" % i, qos=1)
        first, body = read_packet(s)
        self.assertEqual(first & 0xF0, 0x30)
        self.assertTrue(body.endswith(b"0"))
        pid = body[6:8]  # after the topic (2 + 4 bytes)
        s.settimeout(1.0)  # nothing more while the PUBACK is withheld
        with self.assertRaises(socket.timeout):
            s.recv(1)
        s.settimeout(5)
        s.sendall(b"\x40\x02" + pid)  # PUBACK
        first, body = read_packet(s)
        self.assertEqual(first & 0xF0, 0x30)
        self.assertTrue(body.endswith(b"1"))
        s.close()

    def test_sys_topics(self):
        r = run_cli(["mosquitto_sub", "-p", str(self.port), "-t", "$SYS/broker/#", "-v", "-W", "3"])
        topics = dict(line.split(" ", 1) for line in r.stdout.strip().split("\n") if " " in line)
        for t in ("$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected",
                  "$SYS/broker/messages/received", "$SYS/broker/bytes/sent", "$SYS/broker/subscriptions/count"):
            self.assertIn(t, topics)
        self.assertTrue(topics["$SYS/broker/version"].startswith("fleetmq"))
        # A '#' subscription does not see $SYS.
        r = run_cli(["mosquitto_sub", "-p", str(self.port), "-t", "#", "-v", "-W", "2"])
        self.assertNotIn("$SYS", r.stdout)


class BenchTool(BrokerTest):
    def test_bench_smoke(self):
        """fleetmq-bench runs against the real broker and reports JSON (no timing asserted)."""
        import json, os
        bench = os.path.join(os.path.dirname(FLEETMQ), "..", "bench", "fleetmq-bench")
        for args in (["--qos", "0"], ["--qos", "1"], ["--scenario", "fanout", "--subs", "3"]):
            r = run_cli([bench, "--port", str(self.port), "--duration", "0.5", "--warmup", "0.2",
                         "--broker-pid", str(self.broker.proc.pid)] + args, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = json.loads(r.stdout.strip().split("\n")[-1])
            self.assertGreater(out["received"], 0)
            self.assertGreater(out["broker_cpu_s"], 0)
        r = run_cli([bench, "--host", "10.0.0.1"])
        self.assertEqual(r.returncode, 2)  # loopback only


class FirstByte(BrokerTest):
    # The default connect timeout (10 s): what is tested is that the first
    # byte alone closes a non-MQTT client.

    def test_http_request_on_the_mqtt_port_is_closed_at_once(self):
        for req in (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\x16\x03\x01\x00\xa5"):  # HTTP, a TLS ClientHello
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            t0 = time.time()
            s.sendall(req)
            s.settimeout(3)
            try:
                self.assertEqual(s.recv(64), b"")  # closed, nothing sent (no CONNACK before CONNECT)
            except ConnectionResetError:
                pass
            self.assertLess(time.time() - t0, 1.0, req)
            s.close()
        self.assertEqual(self.broker.read_log().count("MQTT-3.1.0-1 first packet is not CONNECT"), 2)
        # The broker still serves MQTT.
        c = self.client(client_id="after-http")
        self.assertEqual(c.rc, 0)


class AnonymousAcl(BrokerTest):
    flags = ("--acl.anonymous=readwrite #,deny test/nosubscribe", "--sys_interval=1")

    def test_a_topic_denied_to_plain_port_clients(self):
        c = self.client(client_id="anon")
        self.assertEqual([g.value for g in c.subscribe("test/nosubscribe", 1)], [0x87])
        self.assertEqual([g.value for g in c.subscribe("test/ok", 1)], [1])  # the control
        info = c.publish("test/nosubscribe", b"x", qos=1)
        self.assertEqual(info.rc, 0)
        c.publish("test/ok", b"fine", qos=1)
        self.assertEqual(c.get().payload, b"fine")
        # 3.1.1 sees 0x80 (failure) in the SUBACK.
        old = self.client(client_id="anon311", v5=False)
        self.assertEqual(old.subscribe("test/nosubscribe", 1), [128])
        self.assertEqual(sys_at_least(self.port, "$SYS/broker/publish/messages/denied", 3), 3)


class BadInput(BrokerTest):
    flags = ("--limits.connect_timeout_ms=500", "--limits.max_packet_size=1024",
             "--limits.max_output_buffer=4096", "--sys_interval=1")

    def raw(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s

    def assert_closed(self, s, timeout=3):
        s.settimeout(timeout)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return data
                data += chunk
        except ConnectionResetError:
            return data

    def test_garbage_closes_only_that_connection(self):
        sub = self.client(client_id="bystander")
        sub.subscribe("alive", 0)
        pub = self.client(client_id="bystander-pub", v5=False)
        for garbage in (b"\x00\x00", b"GET / HTTP/1.1\r\n\r\n", b"\x10\xff\xff\xff\xff\x7f", b"\xc0\x80\x00"):
            s = self.raw()
            s.sendall(garbage)
            self.assert_closed(s)
            pub.publish("alive", garbage[:1], qos=1)
            self.assertEqual(sub.get().payload, garbage[:1])
        self.assertIn("closed: malformed packet", self.broker.read_log())

    def test_connect_timeout(self):
        s = self.raw()
        t0 = time.time()
        self.assert_closed(s, timeout=5)
        self.assertLess(time.time() - t0, 3)
        self.assertIn("connect_timeout", self.broker.read_log())

    def test_oversize_packet_v5_gets_disconnect_0x95(self):
        c = self.client(client_id="big")
        c.c.publish("t", b"x" * 4000, qos=0)
        rc = c.disconnects.get(timeout=5)
        self.assertEqual(int(rc.value) if hasattr(rc, "value") else rc, 0x95)

    def test_reason_code_survives_bytes_still_in_flight(self):
        """The broker refuses an oversize PUBLISH from its header and closes
        while the client is still sending: the client must still be able to
        finish writing and then read the DISCONNECT 0x95. Closing a socket
        with unread input sends RST, and the client's next write fails
        (EPIPE) before it reads the reason (Paho's test_flow_control2)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([5, 2, 0, 30, 0, 0, 0]))  # v5, empty id
        self.assertEqual(s.recv(2)[0], 0x20)
        s.recv(64)  # the rest of the CONNACK
        body = bytes([0, 1]) + b"t" + bytes([0]) + b"x" * 10000  # a two-byte remaining length
        n = len(body)
        s.sendall(bytes([0x30, (n & 0x7f) | 0x80, n >> 7]) + body)
        time.sleep(0.3)  # the broker has refused it and sent its DISCONNECT by now
        s.sendall(b"x" * 1000)  # still in flight from the client's side: no reset
        time.sleep(0.1)
        s.sendall(b"x" * 1000)
        data = s.recv(64)
        self.assertEqual(data[:1], b"\xe0")
        self.assertEqual(data[2:3], b"\x95")
        s.close()

    def test_client_that_never_reads_is_paused_not_buffered(self):
        """A publisher flooding QoS 1 without reading its PUBACKs: the broker
        stops reading it (backpressure) instead of buffering acks without
        bound, and keeps serving everyone else."""
        sub = self.client(client_id="calm")
        sub.subscribe("calm", 0)
        s = self.raw()
        s.sendall(bytes.fromhex("100d00044d5154540402003c0001") + b"f")
        one = bytes.fromhex("3208000166") + b"\x00\x01" + b"x" * 3  # QoS 1 PUBLISH to 'f'
        flood = one * 3000000  # ~30 MB: past the kernel socket buffers
        stop = threading.Event()

        def send():
            s.settimeout(10)
            try:
                view = memoryview(flood)
                while view and not stop.is_set():
                    n = s.send(view[:65536])
                    view = view[n:]
            except OSError:
                pass

        t = threading.Thread(target=send, daemon=True)
        t.start()
        t.join(6)
        pub = self.client(client_id="calm-pub")
        pub.publish("calm", b"still here", qos=1)
        self.assertEqual(sub.get().payload, b"still here")
        self.assertGreaterEqual(sys_at_least(self.port, "$SYS/broker/connections/reads_paused", 1), 1)
        stop.set()
        s.close()

    def test_publish_to_sys_is_refused(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(mqtt5_connect("sysp"))
        self.assertEqual(read_packet(s)[0], 0x20)
        s.sendall(mqtt5_publish("$SYS/broker/fake", b"fake", qos=1, packet_id=3))
        first, body = read_packet(s)
        self.assertEqual((first, body[:2], body[2]), (0x40, b"\x00\x03", 0x87))  # PUBACK: not authorized
        s.close()
        # Nothing was stored under $SYS: the topic the broker never writes
        # stays empty, while its own topics are there (the control).
        r = run_cli(["mosquitto_sub", "-p", str(self.port), "-t", "$SYS/broker/fake", "-t", "$SYS/broker/version",
                     "-W", "3", "-C", "1", "-v"])
        self.assertTrue(r.stdout.startswith("$SYS/broker/version fleetmq"), r.stdout)


class Lifecycle(unittest.TestCase):
    def test_invalid_config_names_the_key(self):
        r = run_cli([FLEETMQ, "--limits.max_inflight=0"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("limits.max_inflight", r.stderr)
        r = run_cli([FLEETMQ, "--bogus=1"])
        self.assertIn("bogus", r.stderr)

    def test_second_broker_on_same_data_dir_is_refused(self):
        b = Broker().start()
        try:
            r = run_cli([FLEETMQ, "--listen=127.0.0.1:0", "--data_dir=" + b.data_dir])
            self.assertEqual(r.returncode, 1)
            self.assertIn("in use", r.stderr)
        finally:
            b.close()

    def test_sigterm_sends_server_shutting_down(self):
        b = Broker().start()
        try:
            c = PahoClient(b.port, client_id="bye")
            self.assertEqual(b.stop(), 0)
            rc = c.disconnects.get(timeout=5)
            self.assertEqual(int(rc.value) if hasattr(rc, "value") else rc, 0x8B)
            c.c.loop_stop()
        finally:
            b.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
