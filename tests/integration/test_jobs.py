"""Jobs end to end: the real broker, real fleetmq-device agents over mutual
TLS, jobs created with fleetmq-admin (doc/jobs.md, doc/device-api.md).
Failures, silence, retries and abort thresholds; offline devices served when
they connect; cancel with force; kill -9 mid-job; the device channel's
isolation; bad device messages and bad operator input."""
import json
import re  # noqa: F401
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import (Broker, run_cli, wait_for, mqtt5_connect, mqtt5_publish, mqtt5_subscribe, read_packet,
                     parse_publish, sys_at_least, FLEETMQ, PKI)

ADMIN = os.environ.get("FLEETMQ_ADMIN_BIN", os.path.join(os.path.dirname(FLEETMQ), "..", "tools", "fleetmq-admin"))
DEVICE = os.environ.get("FLEETMQ_DEVICE_BIN", os.path.join(os.path.dirname(ADMIN), "fleetmq-device"))
# Sanitizer builds handshake ~10x slower: the big fleet is smaller there.
SANITIZED = b"libasan" in subprocess.run(["ldd", FLEETMQ], capture_output=True).stdout or \
    b"libtsan" in subprocess.run(["ldd", FLEETMQ], capture_output=True).stdout
FLEET = 120 if SANITIZED else 500


class JobsBase(unittest.TestCase):
    flags = ()

    def setUp(self):
        self.broker = Broker("--tls_listen=127.0.0.1:0", "--sys_interval=1", *self.flags).start()
        self.pki = os.path.join(self.broker.data_dir, "pki")
        self.tmp = tempfile.mkdtemp(prefix="fleetmq-jobs-")
        self.agents = []
        self.model = False

    def tearDown(self):
        for a in self.agents:
            if a.poll() is None:
                a.kill()
                a.wait()
        self.broker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)  # device certificates, images, agent logs

    def admin(self, *args, ok=True, timeout=30):
        cmd = [ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port), "--json"]
        r = run_cli(cmd + list(args), timeout=timeout)
        if ok:
            self.assertEqual(r.returncode, 0, "%s: %s %s" % (args, r.stdout, r.stderr))
            return json.loads(r.stdout)["data"]
        return r

    def error_code(self, r):
        self.assertNotEqual(r.returncode, 0)
        return r.stderr.split(":")[0].replace("error ", "").strip()

    def fleet(self, prefix, n, groups=()):
        """n devices prefix0.. with certificates in self.tmp/prefix and registered."""
        certs = os.path.join(self.tmp, prefix)
        r = run_cli([PKI, "devices", "--dir", self.broker.data_dir, "--tenant", "default", "--prefix", prefix,
                     "--count", str(n), "--out", certs], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        if not self.model:
            self.admin("model.create", "model_id=m1", "manufacturer=acme")
            for g in groups:
                self.admin("group.create", "group_id=" + g, "name=" + g)
            self.model = True
        for i in range(0, n, 100):
            cmds = [{"command": "device.register", "device_id": "%s%d" % (prefix, k), "serial_number": "sn-%s%d" % (
                prefix, k), "model_id": "m1", "group_ids": list(groups)} for k in range(i, min(n, i + 100))]
            r = run_cli([ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port), "--json",
                         "--raw", json.dumps({"commands": cmds})], timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn('"error"', r.stdout)
        return certs

    def agent(self, prefix, n, *knobs, start=0):
        log = os.path.join(self.tmp, "%s-%d.log" % (prefix, len(self.agents)))
        p = subprocess.Popen([DEVICE, "--port", str(self.broker.tls_port), "--ca", os.path.join(self.pki, "root.crt"),
                              "--certs", os.path.join(self.tmp, prefix), "--prefix", prefix, "--count", str(n),
                              "--start", str(start), "--log", log] + list(knobs),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        p.log_path = log
        self.agents.append(p)
        return p

    def stop_agent(self, p):
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
        return json.loads(out.strip().splitlines()[-1])

    def connected(self, n, timeout=60):
        got = sys_at_least(self.broker.port, "$SYS/broker/clients/connected", n, timeout=timeout)
        self.assertGreaterEqual(got, n)

    def wait_job(self, job_id, statuses, timeout=60):
        last = {}

        def done():
            last.update(self.admin("job.get", "job_id=" + job_id))
            return last["status"] in statuses
        self.assertTrue(wait_for(done, timeout=timeout, step=0.3), last)
        return last

    def executions(self, job_id):
        out, cursor = {}, ""
        while True:
            args = ["job.executions", "job_id=" + job_id, "limit=1000"] + (["cursor=" + cursor] if cursor else [])
            d = self.admin(*args)
            for e in d["executions"]:
                out[e["device_id"]] = e
            cursor = d["next_cursor"]
            if not cursor:
                return out

    @staticmethod
    def device_log(*agents):
        """The last final status each device reported: device → (status, attempt)."""
        last = {}
        for a in agents:
            if not os.path.exists(a.log_path):
                continue
            with open(a.log_path) as f:
                for line in f:
                    e = json.loads(line)
                    if "job_id" in e:  # (configuration reports are logged too)
                        last[e["device"]] = (e["status"], e["attempt"])
        return last


class JobsTest(JobsBase):
    def test_fleet_with_failures_silence_retries_and_timeouts(self):
        """A command job over the fleet (500 devices; 120 under sanitizers):
        10 % of attempts fail, 5 % of devices never answer. Two attempts,
        3 s step timeout: the job completes, every device in exactly one
        terminal state, each the last thing that device reported (silent ones
        TIMED_OUT), and each device's history is in the audit log."""
        self.fleet("f", FLEET)
        agent = self.agent("f", FLEET, "--fail-pct", "10", "--silent-pct", "5", "--window", "32")
        self.connected(FLEET, timeout=180)
        job = self.admin("job.create", "job_id=fleet1", 'document={"command":"collect-logs"}', "group_id=",
                         ok=False)
        self.assertEqual(self.error_code(job), "invalid_argument")  # "group_id=" names no group
        ids = ",".join("f%d" % i for i in range(FLEET))
        job = self.admin("job.create", "job_id=fleet1", 'document={"command":"collect-logs"}', "device_ids=" + ids,
                         'retry={"max_attempts":2,"backoff_ms":100}', 'timeouts={"step_s":3}')
        self.assertEqual(job["total"], FLEET)
        g = self.wait_job("fleet1", ("COMPLETED",), timeout=120)
        c = g["counts"]
        self.assertEqual(sum(c.values()), FLEET, c)
        self.assertEqual(c["QUEUED"] + c["SENT"] + c["DELIVERED"] + c["IN_PROGRESS"], 0, c)
        summary = self.stop_agent(agent)
        seen = self.device_log(agent)
        ex = self.executions("fleet1")
        self.assertEqual(len(ex), FLEET)
        silent = 0
        for dev, e in ex.items():
            if dev in seen:
                self.assertEqual((e["state"], e["attempt"]), seen[dev], dev)
            else:
                silent += 1
                self.assertEqual(e["state"], "TIMED_OUT", dev)
                self.assertEqual(e["attempt"], 2, dev)
        self.assertEqual(c["TIMED_OUT"], silent)
        self.assertGreater(silent, 0)
        self.assertGreater(c["FAILED"], 0)  # both attempts failed for ~1 %
        self.assertGreater(c["SUCCEEDED"], FLEET * 0.85)
        self.assertGreater(g["retries"] if "retries" in g else 1, 0)
        self.assertEqual(summary["errors"], 0)
        # One audit entry per attempt of each device, with every state it went through.
        for dev in ("f1", "f2", "f3"):
            hist = [e["details"] for e in self.admin("audit.query", "device_id=" + dev, "limit=100")["entries"]
                    if e["action"] == "job.execution"]
            hist = [json.loads(h) if isinstance(h, str) else h for h in hist]
            self.assertEqual(hist[-1]["to"], ex[dev]["state"], hist)
            self.assertEqual(hist[-1]["attempt"], ex[dev]["attempt"], hist)
            self.assertEqual(hist[0]["trail"][0][0], "SENT", hist)
            self.assertEqual(hist[-1]["trail"][-1][0], ex[dev]["state"], hist)
        self.assertTrue(self.admin("audit.verify")["valid"])

    def test_abort_threshold_cancels_the_rest(self):
        self.fleet("a", 30)
        agent = self.agent("a", 30, "--fail-pct", "100", "--slow-ms", "200")
        self.connected(30)
        self.admin("job.create", "job_id=bad", 'document={"command":"flash"}', "device_ids=" + ",".join(
            "a%d" % i for i in range(30)), 'rollout={"rate_per_s":20,"max_in_flight":5}',
            'abort={"threshold_pct":50,"min_executed":5}')
        g = self.wait_job("bad", ("ABORTED",), timeout=30)
        self.assertIn("abort criteria met", g["reason"])
        self.assertGreaterEqual(g["counts"]["FAILED"], 5)
        self.assertEqual(g["counts"]["FAILED"] + g["counts"]["CANCELED"], 30, g["counts"])
        self.assertEqual(self.admin("job.list", "status=ABORTED")["jobs"][0]["job_id"], "bad")
        self.stop_agent(agent)

    def test_offline_devices_are_served_when_they_connect(self):
        self.fleet("o", 20)
        first = self.agent("o", 10)
        self.connected(10)
        self.admin("job.create", "job_id=late", 'document={"command":"reboot"}', "device_ids=" + ",".join(
            "o%d" % i for i in range(20)))
        wait_for(lambda: self.admin("job.get", "job_id=late")["counts"]["SUCCEEDED"] == 10, timeout=20)
        g = self.admin("job.get", "job_id=late")
        self.assertEqual(g["counts"]["SUCCEEDED"], 10)
        self.assertEqual(g["counts"]["QUEUED"], 10)
        self.assertEqual(g["waiting_offline"], 10)
        watch = subprocess.Popen([ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port),
                                  "job.watch", "job_id=late"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        second = self.agent("o", 10, start=10)
        g = self.wait_job("late", ("COMPLETED",), timeout=30)
        self.assertEqual(g["counts"]["SUCCEEDED"], 20)
        out, _ = watch.communicate(timeout=10)
        self.assertEqual(watch.returncode, 0, out)
        self.assertIn("10 / 20 devices", out.splitlines()[0])
        self.assertIn("20 / 20 devices  COMPLETED", out.splitlines()[-1])
        self.stop_agent(first)
        self.stop_agent(second)

    def test_cancel_with_force_stops_running_executions(self):
        self.fleet("c", 10)
        agent = self.agent("c", 10, "--slow-ms", "60000")
        self.connected(10)
        self.admin("job.create", "job_id=long", 'document={"command":"wait"}', "device_ids=" + ",".join(
            "c%d" % i for i in range(10)))
        wait_for(lambda: self.admin("job.get", "job_id=long")["counts"]["IN_PROGRESS"] == 10, timeout=20)
        self.assertEqual(self.admin("job.cancel", "job_id=long", "force=true")["status"], "CANCELED")
        g = self.wait_job("long", ("CANCELED",))
        wait_for(lambda: self.admin("job.get", "job_id=long")["counts"]["CANCELED"] == 10, timeout=10)
        self.assertEqual(self.admin("job.get", "job_id=long")["counts"]["CANCELED"], 10)
        self.assertEqual(self.error_code(self.admin("job.cancel", "job_id=long", ok=False)), "invalid_transition")
        wait_for(lambda: False, timeout=0.5)
        summary = self.stop_agent(agent)
        self.assertEqual(summary["cancels"], 10)
        self.assertEqual(summary["succeeded"], 0)
        del g

    def test_kill9_mid_job_resumes_and_states_match_the_devices(self):
        self.fleet("k", 150)
        agent = self.agent("k", 150, "--slow-ms", "300", "--window", "32")
        self.connected(150, timeout=120)
        self.admin("job.create", "job_id=crash", 'document={"command":"reboot"}', "device_ids=" + ",".join(
            "k%d" % i for i in range(150)), 'rollout={"rate_per_s":100}', 'timeouts={"step_s":20}')
        wait_for(lambda: self.admin("job.get", "job_id=crash")["done"] >= 30, timeout=30)
        self.broker.kill9_and_restart()
        g = self.wait_job("crash", ("COMPLETED",), timeout=120)
        self.assertEqual(g["counts"]["SUCCEEDED"], 150, g["counts"])
        self.stop_agent(agent)
        seen = self.device_log(agent)
        for dev, e in self.executions("crash").items():
            self.assertEqual(seen[dev][0], "SUCCEEDED", dev)
            self.assertEqual(e["attempt"], seen[dev][1], dev)

    def test_agents_resume_their_tls_sessions_after_kill9(self):
        # The reference agent keeps its session ticket (doc/device-api.md,
        # "Reconnect behaviour"); the broker's ticket keys survive kill -9:
        # the whole fleet comes back without a full handshake.
        self.fleet("q", 12)
        agent = self.agent("q", 12)
        self.connected(12)
        self.broker.kill9_and_restart()
        self.connected(12, timeout=30)
        resumed = sys_at_least(self.broker.port, "$SYS/broker/tls/resumed", 12)
        self.assertGreaterEqual(resumed, 12)
        full = sys_at_least(self.broker.port, "$SYS/broker/tls/handshakes", 12) - resumed
        self.assertEqual(full, 0, "full handshakes after the restart")
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/tls/tickets/opened", 12), 12)
        self.assertEqual(self.stop_agent(agent)["connects"], 24)

    def test_v311_devices_and_live_progress_events(self):
        self.fleet("v", 5)
        op = os.path.join(self.pki, "operator")
        sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(self.broker.tls_port), "--cafile",
                                os.path.join(self.pki, "root.crt"), "--cert", op + ".crt", "--key", op + ".key",
                                "-V", "mqttv5", "-i", "watcher", "-t", "$SYS/fleetmq/events/v1/jobs/+", "-v"],
                               stdout=subprocess.PIPE, text=True)
        agent = self.agent("v", 5, "--version", "4")
        self.connected(5)
        self.admin("job.create", "job_id=old", 'document={"command":"ping"}', "device_ids=v0,v1,v2,v3,v4")
        self.wait_job("old", ("COMPLETED",), timeout=20)
        time.sleep(1.5)
        sub.terminate()
        out, _ = sub.communicate(timeout=5)
        events = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if " " in line]
        self.assertTrue(events, out)
        self.assertEqual(events[-1]["status"], "COMPLETED")
        self.assertEqual(events[-1]["done"], 5)
        self.assertEqual(self.stop_agent(agent)["succeeded"], 5)


class MoreJobsTest(JobsBase):
    def test_continuous_job_reaches_devices_added_later(self):
        self.fleet("n", 3, groups=("grp",))
        first = self.agent("n", 3)
        self.connected(3)
        self.admin("job.create", "job_id=always", 'document={"command":"onboard"}', "group_id=grp", "continuous=true")
        wait_for(lambda: self.admin("job.get", "job_id=always")["counts"]["SUCCEEDED"] == 3, timeout=20)
        r = run_cli([PKI, "devices", "--dir", self.broker.data_dir, "--tenant", "default", "--prefix", "n", "--count",
                     "1", "--start", "3", "--out", os.path.join(self.tmp, "n")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.admin("device.register", "device_id=n3", "serial_number=sn-n3", "model_id=m1", "group_ids=grp")
        late = self.agent("n", 1, start=3)
        wait_for(lambda: self.admin("job.get", "job_id=always")["counts"]["SUCCEEDED"] == 4, timeout=20)
        g = self.admin("job.get", "job_id=always")
        self.assertEqual((g["status"], g["total"], g["counts"]["SUCCEEDED"]), ("IN_PROGRESS", 4, 4))
        self.admin("job.cancel", "job_id=always")
        self.assertEqual(self.wait_job("always", ("CANCELED",))["counts"]["SUCCEEDED"], 4)
        self.stop_agent(first)
        self.stop_agent(late)

    def test_another_tenants_devices_are_not_targets(self):
        self.fleet("t", 1)
        self.admin("tenant.create", "tenant_id=globex", "name=Globex")
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir, "--tenant", "globex", "--operator", "gop", "--out",
                     self.tmp])
        self.assertEqual(r.returncode, 0, r.stderr)
        glob = ["--cert", os.path.join(self.tmp, "gop.crt"), "--key", os.path.join(self.tmp, "gop.key")]
        self.admin(*glob, "model.create", "model_id=gm", "manufacturer=globex")
        self.admin(*glob, "device.register", "device_id=secret-1", "serial_number=g1", "model_id=gm")
        code = self.error_code(self.admin("job.create", 'document={"c":1}', "device_ids=secret-1", ok=False))
        self.assertEqual(code, "not_found")
        self.admin(*glob, "job.create", "job_id=gjob", 'document={"c":1}', "device_ids=secret-1")
        # Job ids are per tenant: the default tenant neither sees nor steers globex's.
        self.assertEqual(self.error_code(self.admin("job.get", "job_id=gjob", ok=False)), "not_found")
        self.assertEqual(self.error_code(self.admin("job.cancel", "job_id=gjob", ok=False)), "not_found")
        self.assertEqual(self.admin("job.list")["jobs"], [])
        self.assertEqual(self.admin(*glob, "job.get", "job_id=gjob")["status"], "IN_PROGRESS")



class FloodTest(JobsBase):
    flags = ("--management.max_queued_device_messages=5",)

    def test_report_flood_is_refused_busy_and_others_are_served(self):
        """A device flooding reports past management.max_queued_device_messages:
        the excess is refused (QoS 1: PUBACK 0x97, QoS 0: dropped), counted,
        told on its errors topic as "busy"; another device's job completes."""
        certs = self.fleet("q", 2)
        flood = RawDevice(self, certs, "q0")
        self.assertEqual(flood.subscribe("$fleetmq/v1/devices/q0/#"), 0x01)
        one = b'{"job_id":"nope","attempt":1,"status":"SUCCEEDED"}'
        topic = "$fleetmq/v1/devices/q0/jobs/update"
        # Thousands at QoS 0 in one write (QoS 1 is capped by Receive Maximum).
        flood.s.sendall(b"".join(mqtt5_publish(topic, one, 0) for _ in range(5000)))
        busy = sys_at_least(self.broker.port, "$SYS/broker/management/device_messages_refused_busy", 1)
        self.assertGreaterEqual(busy, 1)
        self.assertEqual(flood.wait("errors", timeout=10)["code"], "busy")
        agent = self.agent("q", 1, start=1)
        self.connected(2)
        self.admin("job.create", "job_id=after", 'document={"c":1}', "device_ids=q1")
        self.assertEqual(self.wait_job("after", ("COMPLETED",))["counts"]["SUCCEEDED"], 1)
        self.stop_agent(agent)


class RawDevice:
    """One device over raw MQTT 5 / TLS: PUBACK reason codes and its downlink."""

    def __init__(self, test, certs, name):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(test.pki, "root.crt"))
        ctx.load_cert_chain(os.path.join(certs, name + ".crt"), os.path.join(certs, name + ".key"))
        self.s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", test.broker.tls_port), timeout=5),
                                 server_hostname="localhost")
        self.name = name
        self.pid = 1
        self.inbox = []
        self.s.sendall(mqtt5_connect(name))
        first, body = read_packet(self.s)
        assert first == 0x20 and body[1] == 0, body

    def subscribe(self, f):
        self.pid += 1
        self.s.sendall(mqtt5_subscribe(f, 1, self.pid))
        return self._until(0x90)[-1]

    def publish(self, suffix, payload, topic=None):
        self.pid += 1
        topic = topic or "$fleetmq/v1/devices/%s/%s" % (self.name, suffix)
        self.s.sendall(mqtt5_publish(topic, payload if isinstance(payload, bytes) else payload.encode(), 1, self.pid))
        body = self._until(0x40)
        return body[2] if len(body) > 2 else 0

    def _until(self, ptype):
        while True:
            first, body = read_packet(self.s)
            if first & 0xF0 == 0x30:
                topic, pid, payload = parse_publish(body)
                self.s.sendall(b"\x40\x02" + pid)
                self.inbox.append((topic, json.loads(payload)))
                continue
            if first & 0xF0 == ptype:
                return body

    def wait(self, suffix, timeout=5):
        end = time.time() + timeout
        want = "$fleetmq/v1/devices/%s/%s" % (self.name, suffix)
        self.s.settimeout(0.2)
        try:
            while time.time() < end:
                for i, (t, p) in enumerate(self.inbox):
                    if t == want:
                        del self.inbox[i]
                        return p
                try:
                    self._until(0xF0 + 1)  # reads (and acks) publishes until the timeout
                except (socket.timeout, ssl.SSLError):
                    pass
        finally:
            self.s.settimeout(5)
        raise AssertionError("no %s; inbox %s" % (want, self.inbox))


class DeviceChannelTest(JobsBase):
    def test_channel_isolation(self):
        certs = self.fleet("i", 2)
        a, b = RawDevice(self, certs, "i0"), RawDevice(self, certs, "i1")
        self.assertEqual(a.subscribe("$fleetmq/v1/devices/i0/#"), 0x01)
        self.assertEqual(a.subscribe("$fleetmq/v1/devices/i1/#"), 0x87)
        self.assertEqual(a.subscribe("$fleetmq/v1/devices/+/jobs/notify"), 0x87)
        self.assertEqual(a.subscribe("$fleetmq/#"), 0x87)
        self.assertEqual(a.subscribe("$share/g/$fleetmq/v1/devices/i0/#"), 0x87)
        # Forging another device's report or reading its channel: refused.
        self.assertEqual(a.publish(None, '{"job_id":"x","attempt":1,"status":"SUCCEEDED"}',
                                   topic="$fleetmq/v1/devices/i1/jobs/update"), 0x87)
        op = os.path.join(self.pki, "operator")
        r = run_cli(["mosquitto_sub", "-h", "localhost", "-p", str(self.broker.tls_port), "--cafile",
                     os.path.join(self.pki, "root.crt"), "--cert", op + ".crt", "--key", op + ".key", "-V", "mqttv5",
                     "-t", "$fleetmq/v1/devices/i0/#", "-C", "1", "-W", "2", "-d"])
        self.assertRegex(r.stdout + r.stderr, r"Subscribed \(mid: \d+\): 135")
        r = run_cli(["mosquitto_pub", "-h", "localhost", "-p", str(self.broker.tls_port), "--cafile",
                     os.path.join(self.pki, "root.crt"), "--cert", op + ".crt", "--key", op + ".key", "-V", "mqttv5",
                     "-q", "1", "-t", "$fleetmq/v1/devices/i0/jobs/notify", "-m", "{}", "-d"])
        self.assertRegex(r.stdout + r.stderr, r"PUBACK.*RC:\s*135")
        # Anonymous plain-port clients neither reach nor read a tenant's devices.
        r = run_cli(["mosquitto_pub", "-p", str(self.broker.port), "-V", "mqttv5", "-q", "1", "-t",
                     "$fleetmq/v1/devices/i0/jobs/notify", "-m", "{}", "-d"])
        self.assertRegex(r.stdout + r.stderr, r"PUBACK.*RC:\s*135")
        with self.assertRaises(AssertionError):
            a.wait("jobs/notify", timeout=0.5)
        self.assertEqual(b.subscribe("$fleetmq/v1/devices/i1/#"), 0x01)

    def test_bad_device_messages_get_errors_and_change_nothing(self):
        certs = self.fleet("b", 3)
        d = RawDevice(self, certs, "b0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/b0/#"), 0x01)
        self.assertEqual(d.publish("jobs/update", "{not json"), 0x99)
        self.assertEqual(d.wait("errors")["code"], "bad_request")
        self.assertEqual(d.publish("jobs/update", "x" * 9000), 0x99)
        self.assertEqual(d.wait("errors")["code"], "too_large")
        self.assertEqual(d.publish("jobs/nope", "{}"), 0x90)
        self.assertEqual(d.wait("errors")["code"], "unknown_topic")
        for bad in ('{"job_id":"j","attempt":0,"status":"SUCCEEDED"}', '{"job_id":"j","attempt":1,"status":"DONE"}',
                    '{"job_id":"j","attempt":1,"status":"SUCCEEDED","extra":1}', '[1,2]',
                    '{"job_id":"j","attempt":1,"status":"FAILED","details":"no"}',
                    '{"job_id":"j","attempt":1,"status":"FAILED","client_token":"%s"}' % ("t" * 65),
                    '{"job_id":"j","attempt":1,"status":"FAILED","details":{"x":"%s"}}' % ("y" * 1100)):
            self.assertEqual(d.publish("jobs/update", bad), 0x99, bad)
            self.assertEqual(d.wait("errors")["code"], "bad_request", bad)
        self.assertEqual(d.publish("jobs/update", '{"job_id":"ghost","attempt":1,"status":"SUCCEEDED",'
                                                  '"client_token":"t1"}'), 0)
        rej = d.wait("jobs/update/rejected")
        self.assertEqual((rej["error"]["code"], rej["client_token"]), ("unknown_job", "t1"))
        # A real job: b1 is targeted, b0 is not.
        other = RawDevice(self, certs, "b1")
        self.assertEqual(other.subscribe("$fleetmq/v1/devices/b1/#"), 0x01)
        self.admin("job.create", "job_id=j1", 'document={"command":"x"}', "device_ids=b1")
        n = other.wait("jobs/notify")
        self.assertEqual((n["job_id"], n["attempt"], n["document"]), ("j1", 1, {"command": "x"}))
        self.assertEqual(d.publish("jobs/update", '{"job_id":"j1","attempt":1,"status":"SUCCEEDED"}'), 0)
        self.assertEqual(d.wait("jobs/update/rejected")["error"]["code"], "not_found")
        self.assertEqual(other.publish("jobs/update", '{"job_id":"j1","attempt":2,"status":"SUCCEEDED"}'), 0)
        self.assertEqual(other.wait("jobs/update/rejected")["error"]["code"], "stale_attempt")
        self.assertEqual(self.admin("job.get", "job_id=j1")["counts"]["SUCCEEDED"], 0)
        self.assertEqual(other.publish("jobs/update", '{"job_id":"j1","attempt":1,"status":"SUCCEEDED",'
                                                      '"details":{"ok":true}}'), 0)
        self.assertEqual(other.wait("jobs/update/accepted")["status"], "SUCCEEDED")
        self.wait_job("j1", ("COMPLETED",))
        self.assertEqual(other.publish("jobs/update", '{"job_id":"j1","attempt":1,"status":"FAILED"}'), 0)
        self.assertEqual(other.wait("jobs/update/rejected")["error"]["code"], "terminal")
        ex = self.executions("j1")["b1"]
        self.assertEqual((ex["state"], ex["details"]), ("SUCCEEDED", {"ok": True}))
        # Asking for pending work: nothing.
        self.assertEqual(other.publish("jobs/get", '{"client_token":"g"}'), 0)
        self.assertEqual(other.wait("jobs/pending"), {"executions": [], "client_token": "g"})
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/device_messages_rejected", 10),
                                10)

    def test_operator_bad_input(self):
        self.fleet("p", 2)
        code = lambda *a: self.error_code(self.admin(*a, ok=False))
        self.assertEqual(code("job.create", 'document={"c":1}'), "invalid_argument")  # no target
        self.assertEqual(code("job.create", 'document={"c":1}', "device_ids=p0", "group_id=g"), "invalid_argument")
        self.assertEqual(code("job.create", 'document={"c":1}', "device_ids=p0", 'rollout={"rate_per_s":0}'),
                         "invalid_argument")
        self.assertEqual(code("job.create", 'document={"c":1}', "device_ids=p0", 'rollout={"rate_per_s":1e15}'),
                         "invalid_argument")
        self.assertEqual(code("job.create", 'document={"c":1}', "device_ids=p0", 'retry={"max_attempts":-1}'),
                         "invalid_argument")
        self.assertEqual(code("job.create", 'document={"c":1}', "device_ids=p0,not-mine"), "not_found")
        self.assertEqual(code("job.create", 'document={"c":1}', "group_id=nogroup"), "not_found")
        self.assertEqual(code("job.create", 'document={"c":"%s"}' % ("x" * 17000), "device_ids=p0"),
                         "invalid_argument")
        self.assertEqual(code("job.get", "job_id=none"), "not_found")
        self.assertEqual(code("job.cancel", "job_id=none"), "not_found")
        self.admin("job.create", "job_id=done", 'document={"c":1}', "device_ids=p0,p1")
        self.admin("job.cancel", "job_id=done")
        self.assertEqual(code("job.cancel", "job_id=done"), "invalid_transition")
        self.assertEqual(code("job.resume", "job_id=done"), "invalid_transition")
        self.assertEqual(code("job.create", "job_id=done", 'document={"c":1}', "device_ids=p0"), "already_exists")
        self.assertEqual(self.admin("job.executions", "job_id=done", "state=CANCELED")["executions"][0]["device_id"],
                         "p0")
        self.assertEqual(code("job.executions", "job_id=done", "state=WHATEVER"), "invalid_argument")


if __name__ == "__main__":
    unittest.main()
