"""Remote configuration end to end (doc/configuration-management.md,
doc/device-api.md "Configuration"): the real broker, real fleetmq-device
agents over mutual TLS, fleetmq-admin. A group push as a config job with
live progress; an offline device catching up once with exactly the final
document; a rejection with its reason; drift repaired with the whole
document; kill -9 during a group push; MQTT 3.1.1 devices; another tenant's
isolation; every bad device message and operator input with its code. The
device's hash is recomputed here with Python's json (the canonical form is
a contract, not the broker's private choice)."""
import hashlib
import json
import os
import unittest

from harness import run_cli, wait_for, sys_at_least, PKI
from test_jobs import ADMIN, JobsBase, RawDevice, SANITIZED

FLEET = 60 if SANITIZED else 300


def canonical(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha(doc):
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


def document(kb=5, **extra):
    """A plausible configuration document of about `kb` KiB."""
    d = {"telemetry": {"interval_s": 30, "topics": ["temp", "rpm", "volt"]}, "mode": "eco",
         "limits": {"max_rpm": 4000, "min_volt": 11.5},
         "calibration": {"c%03d" % i: i * 0.25 for i in range(max(1, kb * 1024 // 14))}}
    d.update(extra)
    return d


class ConfigTest(JobsBase):
    def config_log(self, *agents):
        """Every configuration report each device made, in order: device → [(version, status, hash)]."""
        out = {}
        for a in agents:
            if not os.path.exists(a.log_path):
                continue
            with open(a.log_path) as f:
                for line in f:
                    e = json.loads(line)
                    if "config_version" in e:
                        out.setdefault(e["device"], []).append((e["config_version"], e["status"], e["hash"]))
        return out

    def status_counts(self, *target):
        return self.admin("config.status", *target)["counts"]

    def test_group_push_with_live_progress_reaches_every_device(self):
        """A 5 KiB group template to the whole fleet as a config job, watched
        live with job.watch: every device APPLIED, each with exactly the
        document's hash, and a second change goes out as a small patch."""
        self.fleet("g", FLEET, groups=("fleet",))
        agent = self.agent("g", FLEET, "--window", "32")
        self.connected(FLEET, timeout=180)
        doc = document()
        r = self.admin("config.set", "group_id=fleet", "document=" + json.dumps(doc), 'rollout={"rate_per_s":200}')
        self.assertEqual(r["version"], 1)
        self.assertEqual(r["hash"], sha(doc))
        job = r["job_id"]
        w = run_cli([ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port), "job.watch",
                     "job_id=" + job], timeout=120)
        self.assertEqual(w.returncode, 0, w.stdout + w.stderr)
        self.assertIn("%d / %d devices" % (FLEET, FLEET), w.stdout + w.stderr)
        g = self.wait_job(job, ("COMPLETED",), timeout=60)
        self.assertEqual(g["type"], "config")
        self.assertEqual(g["counts"]["SUCCEEDED"], FLEET, g["counts"])
        c = self.status_counts("group_id=fleet")
        self.assertEqual(c["APPLIED"], FLEET, c)
        one = self.admin("config.get", "device_id=g7")
        self.assertEqual(one["state"], "APPLIED")
        self.assertEqual(one["applied"]["hash"], sha(doc))
        self.assertEqual(one["applied"]["document"], doc)
        # A small change: a patch to each device, on top of what it applied.
        r2 = self.admin("config.set", "group_id=fleet", 'patch={"mode":"sport"}', "if_version=1")
        self.assertEqual(r2["diff"], {"mode": "sport"})
        self.wait_job(r2["job_id"], ("COMPLETED",), timeout=90)
        doc["mode"] = "sport"
        self.assertEqual(self.status_counts("group_id=fleet")["APPLIED"], FLEET)
        s = self.stop_agent(agent)
        self.assertGreaterEqual(s["config"]["patches"], FLEET, s)
        self.assertEqual(s["config"]["gets"], 0, s)
        last = self.config_log(agent)
        self.assertEqual(len(last), FLEET)
        for dev, reports in last.items():
            self.assertEqual(reports[-1][1:], ("APPLIED", sha(doc)), dev)
        h = self.admin("config.history", "group_id=fleet")
        self.assertEqual([v["version"] for v in h["versions"]], [2, 1])
        self.assertEqual(h["versions"][0]["change"], {"mode": "sport"})
        self.assertEqual(self.admin("config.get", "group_id=fleet", "diff_from=1", "diff_to=2")["diff"],
                         {"mode": "sport"})

    def test_offline_device_catches_up_once_with_the_final_document(self):
        """Five changes while the device is offline: on connect it gets one
        message, before asking for anything, with exactly the final document."""
        self.fleet("o", 2, groups=("og",))
        self.admin("config.set", "group_id=og", 'document={"base":true,"level":0}')
        for i in range(1, 6):
            self.admin("config.set", "device_id=o0", "patch=" + json.dumps({"level": i, "step%d" % i: i}))
        final = {"base": True, "level": 5, "step1": 1, "step2": 2, "step3": 3, "step4": 4, "step5": 5}
        got = self.admin("config.get", "device_id=o0")
        self.assertEqual(got["desired"]["document"], final)
        self.assertEqual(got["state"], "PENDING")
        agent = self.agent("o", 1, "--window", "1")
        self.assertTrue(wait_for(lambda: self.admin("config.get", "device_id=o0")["state"] == "APPLIED", timeout=30))
        s = self.stop_agent(agent)
        self.assertEqual(s["config"]["desired"], 1, s)
        self.assertEqual(s["config"]["applied"], 1, s)
        log = self.config_log(agent)["o0"]
        self.assertEqual(len(log), 1)
        self.assertEqual(log[0][1:], ("APPLIED", sha(final)))
        got = self.admin("config.get", "device_id=o0")
        self.assertEqual(got["applied"]["document"], final)
        self.assertEqual(got["applied"]["version"], got["desired"]["version"])
        # Reconnecting in sync: nothing is sent again. The first agent's
        # device is gone first, so connected(1) below waits for the new one
        # (a stale count let the test signal an agent still starting up).
        self.assertTrue(wait_for(lambda: not self.admin("health.get", "device_id=o0")["online"], timeout=10))
        agent = self.agent("o", 1, "--window", "1", "--idle-exit", "2")
        # The device itself, not $SYS clients/connected (which also counts
        # the admin CLI's own connection: SIGTERM could then reach an agent
        # still starting, before its handlers, and it would print nothing).
        self.assertTrue(wait_for(lambda: self.admin("health.get", "device_id=o0")["online"], timeout=30))
        s = self.stop_agent(agent)
        self.assertEqual(s["config"]["desired"], 0, s)

    def test_rejection_keeps_the_reason_and_shows_in_compliance(self):
        self.fleet("r", 3, groups=("rg",))
        ok = self.agent("r", 2, "--window", "2")
        bad = self.agent("r", 1, "--config-reject-pct", "100", start=2)
        self.connected(3)
        r = self.admin("config.set", "group_id=rg", 'document={"feature":"x"}', 'timeouts={"step_s":10}')
        g = self.wait_job(r["job_id"], ("COMPLETED",), timeout=30)
        self.assertEqual((g["counts"]["SUCCEEDED"], g["counts"]["REJECTED"]), (2, 1), g["counts"])
        st = self.admin("config.get", "device_id=r2")
        self.assertEqual((st["state"], st["reason"]), ("REJECTED", "simulated rejection"))
        c = self.admin("config.status", "group_id=rg")
        self.assertEqual((c["counts"]["APPLIED"], c["counts"]["REJECTED"]), (2, 1))
        self.assertEqual(c["non_compliant"], [{"device_id": "r2", "state": "REJECTED", "reason": "simulated rejection",
                                               "desired_version": st["desired"]["version"],
                                               "applied_version": st["applied"]["version"]}])
        audit = self.admin("audit.query", "device_id=r2")["entries"]
        self.assertTrue(any(e["action"] == "config.rejected" for e in audit), audit)
        for a in (ok, bad):
            self.stop_agent(a)

    def test_drift_is_repaired_with_the_whole_document(self):
        """A device that reports the hash of a corrupted document gets the
        whole document and ends APPLIED with the right hash."""
        self.fleet("d", 1)
        agent = self.agent("d", 1, "--config-drift-pct", "100")
        self.connected(1)
        self.admin("config.set", "device_id=d0", "document=" + json.dumps(document(2)))
        self.assertTrue(wait_for(lambda: self.admin("config.get", "device_id=d0")["state"] == "APPLIED", timeout=20))
        self.admin("config.set", "device_id=d0", 'patch={"mode":"drifted?"}')
        want = document(2, mode="drifted?")

        def repaired():
            g = self.admin("config.get", "device_id=d0")
            return g["state"] == "APPLIED" and g["applied"]["hash"] == sha(want)
        self.assertTrue(wait_for(repaired, timeout=20))
        s = self.stop_agent(agent)
        self.assertEqual(s["config"]["drifts"], 1, s)
        self.assertEqual(s["config"]["full"], 2, s)  # the first document, and the repair
        self.assertGreaterEqual(s["config"]["refused"], 1, s)  # hash_mismatch
        reports = self.config_log(agent)["d0"]
        self.assertNotEqual(reports[-2][2], sha(want))  # the drifted report ...
        self.assertEqual(reports[-1][1:], ("APPLIED", sha(want)))  # ... then the repaired one

    def test_kill9_during_a_group_push_loses_nothing(self):
        n = 120 if not SANITIZED else 40
        self.fleet("k", n, groups=("kg",))
        agent = self.agent("k", n, "--window", "32")
        self.connected(n, timeout=120)
        doc = document(3)
        r = self.admin("config.set", "group_id=kg", "document=" + json.dumps(doc), 'rollout={"rate_per_s":40}',
                       'timeouts={"step_s":15}', 'retry={"max_attempts":3,"backoff_ms":200}')
        wait_for(lambda: self.status_counts("group_id=kg")["APPLIED"] >= 10, timeout=30)
        self.broker.kill9_and_restart()
        g = self.wait_job(r["job_id"], ("COMPLETED",), timeout=120)
        self.assertEqual(g["counts"]["SUCCEEDED"], n, g["counts"])
        c = self.status_counts("group_id=kg")
        self.assertEqual(c["APPLIED"], n, c)
        self.stop_agent(agent)
        for dev, reports in self.config_log(agent).items():
            self.assertEqual(reports[-1][1:], ("APPLIED", sha(doc)), dev)
        self.assertEqual(self.admin("audit.verify")["valid"], True)

    def test_v311_devices_and_model_defaults(self):
        self.fleet("v", 4)
        agent = self.agent("v", 4, "--version", "4")
        self.connected(4)
        r = self.admin("config.set", "model_id=m1", 'document={"from":"model","n":1}')
        self.wait_job(r["job_id"], ("COMPLETED",), timeout=30)
        self.admin("config.set", "device_id=v2", 'document={"n":2,"own":true}')
        self.assertTrue(wait_for(lambda: self.admin("config.get", "device_id=v2")["state"] == "APPLIED", timeout=20))
        v2 = self.admin("config.get", "device_id=v2")
        self.assertEqual(v2["applied"]["document"], {"from": "model", "n": 2, "own": True})
        self.assertEqual([i["kind"] for i in v2["inputs"]], ["model", "device"])
        self.assertEqual(self.status_counts("model_id=m1")["APPLIED"], 4)
        self.stop_agent(agent)

    def test_another_tenant_cannot_see_or_change_our_configuration(self):
        self.fleet("t", 1, groups=("tg",))
        self.admin("config.set", "device_id=t0", 'document={"secret":1}')
        self.admin("tenant.create", "tenant_id=globex", "name=Globex")
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir, "--tenant", "globex", "--operator", "gop", "--out",
                     self.tmp])
        self.assertEqual(r.returncode, 0, r.stderr)
        glob = ["--cert", os.path.join(self.tmp, "gop.crt"), "--key", os.path.join(self.tmp, "gop.key")]
        code = lambda *a: self.error_code(self.admin(*glob, *a, ok=False))
        self.assertEqual(code("config.get", "device_id=t0"), "not_found")
        self.assertEqual(code("config.set", "device_id=t0", 'document={"x":1}'), "not_found")
        self.assertEqual(code("config.set", "group_id=tg", 'document={"x":1}'), "not_found")
        self.assertEqual(code("config.push", "device_id=t0"), "not_found")
        self.assertEqual(self.admin(*glob, "config.history", "device_id=t0")["versions"], [])
        # Globex's own group of the same name is its own document.
        self.admin(*glob, "group.create", "group_id=tg")
        self.admin(*glob, "config.set", "group_id=tg", 'document={"theirs":1}')
        self.assertEqual(self.admin("config.get", "device_id=t0")["desired"]["document"], {"secret": 1})
        self.assertEqual(self.admin("config.history", "group_id=tg")["versions"], [])

    def test_bad_device_messages_get_errors_and_change_nothing(self):
        certs = self.fleet("b", 2)
        d = RawDevice(self, certs, "b0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/b0/#"), 0x01)
        self.admin("config.set", "device_id=b0", 'document={"a":1}')
        m = d.wait("config/desired")
        self.assertEqual((m["document"], m["hash"]), ({"a": 1}, sha({"a": 1})))
        v = m["version"]
        for bad in ('{not json', '[1]', '{"version":-1,"status":"APPLIED","hash":"%s"}' % sha({}),
                    '{"version":%d,"status":"DONE"}' % v, '{"version":%d,"status":"APPLIED"}' % v,
                    '{"version":%d,"status":"APPLIED","hash":"ABC"}' % v,
                    '{"version":%d,"status":"REJECTED","reason":"%s"}' % (v, "r" * 300),
                    '{"version":%d,"status":"APPLIED","hash":"%s","extra":1}' % (v, sha({"a": 1}))):
            self.assertEqual(d.publish("config/report", bad), 0x99, bad)
            self.assertEqual(d.wait("errors")["code"], "bad_request", bad)
        self.assertEqual(d.publish("config/get", '{"full":true}'), 0x99)
        self.assertEqual(d.wait("errors")["code"], "bad_request")
        self.assertEqual(d.publish("config/report", '{"version":%d,"status":"APPLIED","hash":"%s",'
                                                    '"client_token":"c1"}' % (v + 1000, sha({"a": 1}))), 0)
        rej = d.wait("config/report/rejected")
        self.assertEqual((rej["error"]["code"], rej["client_token"]), ("unknown_version", "c1"))
        self.assertEqual(self.admin("config.get", "device_id=b0")["state"], "DELIVERED")
        # Another device's channel: refused at the MQTT level.
        self.assertEqual(d.publish("", '{"version":%d,"status":"APPLIED","hash":"%s"}' % (v, sha({"a": 1})),
                                   topic="$fleetmq/v1/devices/b1/config/report"), 0x87)
        self.assertEqual(self.admin("config.get", "device_id=b1")["state"], "NONE")
        # Asking for the whole document, then acknowledging it right.
        self.assertEqual(d.publish("config/get", "{}"), 0)
        self.assertEqual(d.wait("config/desired")["document"], {"a": 1})
        self.assertEqual(d.publish("config/report", '{"version":%d,"status":"APPLIED","hash":"%s"}' % (
            v, sha({"a": 1}))), 0)
        self.assertEqual(d.wait("config/report/accepted")["status"], "APPLIED")
        self.assertEqual(self.admin("config.get", "device_id=b0")["state"], "APPLIED")
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/device_messages_rejected", 9),
                                9)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/config/reports_refused", 1), 1)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/config/applied", 1), 1)

    def test_operator_bad_input(self):
        self.fleet("p", 1, groups=("pg",))
        code = lambda *a: self.error_code(self.admin(*a, ok=False))
        self.assertEqual(code("config.set", 'document={"a":1}'), "invalid_argument")  # no target
        self.assertEqual(code("config.set", "device_id=p0", "group_id=pg", 'document={"a":1}'), "invalid_argument")
        self.assertEqual(code("config.set", "device_id=p0"), "invalid_argument")  # neither document nor patch
        self.assertEqual(code("config.set", "device_id=p0", 'document={"a":1}', 'patch={"b":1}'), "invalid_argument")
        self.assertEqual(code("config.set", "device_id=nobody", 'document={"a":1}'), "not_found")
        self.assertEqual(code("config.set", "group_id=nogroup", 'document={"a":1}'), "not_found")
        self.assertEqual(code("config.set", "device_id=p0", 'document={"a":1}', "priority=3"), "invalid_argument")
        self.admin("config.set", "device_id=p0", 'document={"a":1}')
        self.assertEqual(code("config.set", "device_id=p0", 'patch={"a":2}', "if_version=0"), "version_conflict")
        self.assertEqual(code("config.set", "device_id=p0", 'document={"x":"%s"}' % ("y" * 70000)), "invalid_argument")
        deep = {}
        cur = deep
        for _ in range(20):
            cur["n"] = {}
            cur = cur["n"]
        self.assertEqual(code("config.set", "device_id=p0", "document=" + json.dumps(deep)), "invalid_argument")
        self.assertEqual(code("config.set", "device_id=p0", 'document={"%s":1}' % ("k" * 200)), "invalid_argument")
        r = self.admin("config.set", "device_id=p0", "document=" + json.dumps(deep), ok=False)
        self.assertIn("nesting deeper than 16", r.stderr)
        r = self.admin("config.set", "device_id=p0", 'document={"x":"%s"}' % ("y" * 70000), ok=False)
        self.assertIn("config.max_document_bytes", r.stderr)
        # Nothing changed by the refusals.
        g = self.admin("config.get", "device_id=p0", "version=1")
        self.assertEqual(g["document"], {"a": 1})
        self.assertEqual(code("config.get", "device_id=p0", "version=2"), "not_found")
        self.assertEqual(self.admin("config.history", "device_id=p0")["versions"][0]["version"], 1)
        self.assertEqual(code("config.status"), "invalid_argument")
        self.assertEqual(code("config.push", "group_id=nogroup"), "not_found")
        # The change and its diff are in the audit log.
        entries = self.admin("audit.query", "device_id=p0")["entries"]
        sets = [e for e in entries if e["action"] == "config.set" and e["result"] == "ok"]
        self.assertEqual(len(sets), 1)
        self.assertEqual(sets[0]["details"]["change"], {"a": 1})


if __name__ == "__main__":
    unittest.main()
