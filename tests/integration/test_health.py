"""Device health against the real broker with real devices (doc/health.md):
fleetmq-device agents report on health/report, operators read the latest
values with the broker's own view of connectivity (health.get) and the
per-minute history (health.history); bad reports from a raw MQTT 5 device
get PUBACK 0x99 and an `errors` message, reports too close together a
health/report/rejected reply, and none of them changes what is stored."""
import json
import os
import time
import unittest

from harness import run_cli, wait_for, sys_at_least
from test_jobs import JobsBase, RawDevice


class HealthTest(JobsBase):
    def test_reports_latest_and_history_from_real_devices(self):
        n = 6
        self.fleet("h", n)
        agent = self.agent("h", n, "--health-s", "1", "--health-silent-pct", "35", "--seed", "5")
        self.connected(n)

        def reporting():
            out = {}
            for i in range(n):
                g = self.admin("health.get", "device_id=h%d" % i)
                if g["report"] is not None:
                    out[g["device_id"]] = g
            return out
        self.assertTrue(wait_for(lambda: len(reporting()) >= 2, timeout=20, step=0.5))
        time.sleep(3)
        got = reporting()
        silent = [("h%d" % i) for i in range(n) if "h%d" % i not in got]
        self.assertTrue(silent, "the silent knob left every device reporting")
        for dev, g in got.items():
            self.assertTrue(g["online"], g)
            self.assertIn("connected_since_ms", g)
            v = g["report"]["values"]
            for k in ("uptime_s", "cpu_pct", "mem_pct", "storage_pct", "battery_pct", "temperature_c", "errors",
                      "m.queue_depth", "m.reports"):
                self.assertIn(k, v, g)
            self.assertTrue(0 <= v["cpu_pct"] <= 100, v)
            self.assertLess(abs(g["report"]["time_ms"] / 1000.0 - time.time()), 5, g)
        for dev in silent:
            g = self.admin("health.get", "device_id=" + dev)
            self.assertIsNone(g["report"], g)
            self.assertTrue(g["online"], g)
        dev = sorted(got)[0]
        h = self.admin("health.history", "device_id=" + dev)
        self.assertEqual(h["resolution_s"], 60)
        self.assertGreaterEqual(len(h["minutes"]), 1, h)
        n_reports = sum(m["metrics"]["cpu_pct"]["n"] for m in h["minutes"])
        self.assertGreaterEqual(n_reports, 3, h)
        last = h["minutes"][-1]["metrics"]["cpu_pct"]
        self.assertLessEqual(last["min"], last["mean"])
        self.assertLessEqual(last["mean"], last["max"])
        only = self.admin("health.history", "device_id=" + dev, "metrics=m.queue_depth")
        self.assertEqual(set(only["minutes"][-1]["metrics"]), {"m.queue_depth"})
        # The broker's own view survives the device going away.
        s = self.stop_agent(agent)
        self.assertGreater(s["health"]["reports"], 6, s)
        self.assertEqual(s["health"]["rejected"], 0, s)
        self.assertTrue(wait_for(lambda: not self.admin("health.get", "device_id=" + dev)["online"], timeout=10))
        g = self.admin("health.get", "device_id=" + dev)
        self.assertIn("last_disconnect_reason", g)
        self.assertIsNotNone(g["report"])
        # Unknown devices, bad arguments.
        r = self.admin("health.get", "device_id=nope", ok=False)
        self.assertIn("not_found", r.stdout + r.stderr)
        r = self.admin("health.history", "device_id=" + dev, "from_ms=10", "to_ms=5", ok=False)
        self.assertIn("invalid_argument", r.stdout + r.stderr)

    def test_fleet_summary_follows_real_devices_and_survives_a_restart(self):
        n = 8
        self.fleet("r", n, groups=("g1",))
        agent = self.agent("r", n, "--health-s", "1", "--health-silent-pct", "30", "--seed", "7")
        self.connected(n)
        summary = lambda *a: self.admin("health.summary", *a)
        self.assertTrue(wait_for(lambda: summary("scope=group:g1")["reporting"] >= 2 and
                                 summary("scope=group:g1")["online"] == n, timeout=20, step=0.5))
        time.sleep(2)
        s = summary("scope=group:g1", "by=model")
        self.assertEqual(s["devices"], n, s)
        self.assertEqual(s["online"], n, s)
        self.assertEqual(s["offline"], 0, s)
        self.assertLess(s["reporting"], n, "the silent knob left every device reporting: %s" % s)
        self.assertEqual(s["never_reported"], n - s["reporting"], s)
        self.assertEqual(s["silent"]["devices"], 0, s)
        cpu = s["metrics"]["cpu_pct"]
        self.assertEqual(cpu["devices"], s["reporting"], s)
        self.assertTrue(cpu["min"] <= cpu["p50"] <= cpu["p90"] <= cpu["max"], cpu)
        self.assertTrue(0 <= cpu["min"] and cpu["max"] <= 100, cpu)
        self.assertEqual(s["by"], [{"scope": "model:m1", "devices": n, "online": n, "offline": 0}], s)
        self.assertEqual(summary("metrics=battery_pct")["metrics"].keys(), {"battery_pct"})
        self.assertEqual(summary("scope=firmware:none")["devices"], 0)  # unknown scope: zeros
        # Offline when the devices leave; the reports stay counted.
        reporting = s["reporting"]
        self.stop_agent(agent)
        self.assertTrue(wait_for(lambda: summary()["online"] == 0, timeout=15, step=0.5))
        t = summary()
        self.assertEqual(t["offline"], n, t)
        self.assertGreaterEqual(t["reporting"], reporting, t)
        self.assertEqual(summary("silent_over_s=0")["silent"]["devices"], 0)  # reported this minute
        # The roll-up holds the devices' latest values: their count and the exact mean of their cpu_pct.
        reported = [self.admin("health.get", "device_id=r%d" % i)["report"] for i in range(n)]
        cpus = [r["values"]["cpu_pct"] for r in reported if r is not None]
        t = summary("scope=group:g1")
        self.assertEqual(t["reporting"], len(cpus), t)
        self.assertAlmostEqual(t["metrics"]["cpu_pct"]["mean"], sum(cpus) / len(cpus), places=6)
        self.assertLessEqual(abs(t["metrics"]["cpu_pct"]["max"] - max(cpus)), 0.022 * max(cpus) + 1e-9, (t, cpus))
        # A restart rebuilds the same figures from the store.
        before = summary("scope=group:g1")
        self.broker.kill9_and_restart()
        after = summary("scope=group:g1")
        for k in ("devices", "online", "reporting", "never_reported"):
            self.assertEqual(after[k], before[k], (before, after))
        self.assertEqual(after["metrics"]["cpu_pct"]["devices"], before["metrics"]["cpu_pct"]["devices"])
        self.assertAlmostEqual(after["metrics"]["cpu_pct"]["mean"], before["metrics"]["cpu_pct"]["mean"], places=6)
        # Bad arguments.
        for bad in ("scope=group:", "scope=os:linux", "by=color", "silent_over_s=-1", "limit=0"):
            r = self.admin("health.summary", bad, *(["by=model"] if bad == "limit=0" else []), ok=False)
            self.assertEqual(self.error_code(r), "invalid_argument", (bad, r.stdout, r.stderr))

    def test_alerts_raised_and_cleared_by_real_devices(self):
        """An error-rate rule raised by agents bursting errors and cleared
        when a calm agent takes over; an offline rule raised when the devices
        stop and cleared when they come back: events on the tenant's alerts
        topic, alert.list, alert.ack, the devices' audit history, a restart,
        and rules that cannot be evaluated refused."""
        from harness import PahoTls
        import os
        n = 3
        self.fleet("a", n, groups=("g1",))
        watcher = PahoTls(self.broker.tls_port, os.path.join(self.pki, "root.crt"),
                          os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key"), "watcher")
        self.addCleanup(watcher.close)
        self.assertEqual(watcher.rc, 0)
        self.assertEqual(watcher.subscribe("$SYS/fleetmq/events/v1/alerts/#"), [1])
        events = []

        def drain():
            while True:
                try:
                    m = watcher.get(timeout=0.05)
                except Exception:
                    return events
                events.append((m.topic, json.loads(m.payload)))

        def seen(kind, rule):
            return sorted(e["device_id"] for t, e in drain() if e["event"] == kind and e["rule_id"] == rule and
                          t == "$SYS/fleetmq/events/v1/alerts/" + rule)

        rule = self.admin("alert.rule.create", "rule_id=err-burst", "metric=errors_per_min", "op=gt",
                          "threshold=100", "clear=30", "for_s=2", "scope=group:g1", "severity=critical")
        self.assertEqual(rule["clear"], 30)
        self.admin("alert.rule.create", "rule_id=gone", "metric=offline", "for_s=3", "scope=group:g1")
        self.assertEqual(sorted(r["rule_id"] for r in self.admin("alert.rule.list")["rules"]), ["err-burst", "gone"])
        # Bursting agents: 20 errors a second, far above 100 a minute, for longer than 2 s.
        agent = self.agent("a", n, "--health-s", "1", "--health-error-pct", "100")
        self.connected(n)
        self.assertTrue(wait_for(lambda: seen("raised", "err-burst") == ["a0", "a1", "a2"], timeout=30, step=0.3),
                        events)
        raised = self.admin("alert.list", "rule_id=err-burst")["alerts"]
        self.assertEqual(len(raised), n, raised)
        self.assertTrue(all(a["severity"] == "critical" and a["value"] > 100 for a in raised), raised)
        acked = self.admin("alert.ack", "rule_id=err-burst", "device_id=a1")
        self.assertTrue(acked["acked"], acked)
        self.assertIn("operator", acked["acked_by"])
        r = self.admin("alert.ack", "rule_id=err-burst", "device_id=a9", ok=False)
        self.assertEqual(self.error_code(r), "not_found")
        # The devices stop: offline for longer than 3 s.
        self.stop_agent(agent)
        self.assertTrue(wait_for(lambda: seen("raised", "gone") == ["a0", "a1", "a2"], timeout=30, step=0.3), events)
        # A restart keeps what is raised, and arms the offline rule for every device.
        self.broker.kill9_and_restart()
        self.assertEqual(len(self.admin("alert.list", "rule_id=gone")["alerts"]), n)
        self.assertTrue(self.admin("alert.list", "rule_id=err-burst", "device_id=a1")["alerts"][0]["acked"])
        watcher.close()
        watcher = PahoTls(self.broker.tls_port, os.path.join(self.pki, "root.crt"),
                          os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key"), "watcher2")
        self.addCleanup(watcher.close)
        self.assertEqual(watcher.subscribe("$SYS/fleetmq/events/v1/alerts/#"), [1])
        del events[:]
        # A calm agent (its counter starts again at 0: no rate for its first report, then a low one).
        self.agent("a", n, "--health-s", "1", "--health-error-pct", "0")
        self.connected(n)
        self.assertTrue(wait_for(lambda: seen("cleared", "gone") == ["a0", "a1", "a2"], timeout=30, step=0.3),
                        events)
        self.assertTrue(wait_for(lambda: seen("cleared", "err-burst") == ["a0", "a1", "a2"], timeout=30, step=0.3),
                        events)
        self.assertEqual(self.admin("alert.list")["alerts"], [])
        every = self.admin("alert.list", "state=all", "device_id=a1")["alerts"]
        self.assertEqual(sorted((a["rule_id"], a["state"]) for a in every),
                         [("err-burst", "cleared"), ("gone", "cleared")])
        hist = [e["action"] for e in self.admin("audit.query", "device_id=a1")["entries"]]
        for action in ("alert.raised", "alert.cleared"):
            self.assertEqual(hist.count(action), 2, hist)
        self.assertTrue(self.admin("audit.verify")["valid"])
        # Rules that cannot be evaluated.
        for bad in (("rule_id=x", "metric=battery_pct", "op=eq", "threshold=1"),
                    ("rule_id=x", "metric=battery_pct", "op=lt"),
                    ("rule_id=x", "metric=battery_pct", "op=lt", "threshold=10", "clear=5"),
                    ("rule_id=x", "metric=offline"),
                    ("rule_id=x", "metric=cpu_pct", "op=gt", "threshold=9", "scope=os:linux"),
                    ("rule_id=err-burst", "metric=cpu_pct", "op=gt", "threshold=9")):
            r = self.admin("alert.rule.create", *bad, ok=False)
            self.assertIn(self.error_code(r), ("invalid_argument", "already_exists"), (bad, r.stderr))
        r = self.admin("alert.rule.create", "rule_id=x", "metric=cpu_pct", "op=gt", "threshold=ninety", ok=False)
        self.assertNotEqual(r.returncode, 0)
        for bad in (("state=open",), ("cursor=zz",)):
            r = self.admin("alert.list", *bad, ok=False)
            self.assertEqual(self.error_code(r), "invalid_argument", (bad, r.stderr))
        self.assertEqual(self.admin("alert.rule.delete", "rule_id=gone")["deleted"], True)
        self.assertEqual(self.admin("alert.list", "state=all", "rule_id=gone")["alerts"], [])
        self.assertEqual(self.error_code(self.admin("alert.rule.delete", "rule_id=gone", ok=False)), "not_found")

    def test_bad_reports_are_refused_and_change_nothing(self):
        certs = self.fleet("b", 2)
        d = RawDevice(self, certs, "b0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/b0/#"), 0x01)
        self.assertEqual(d.publish("health/report", '{"cpu_pct":42,"client_token":"ok1"}'), 0)
        self.assertTrue(wait_for(lambda: self.admin("health.get", "device_id=b0")["report"] is not None))
        many = json.dumps({"metrics": {"m%d" % i: i for i in range(40)}})
        for body, why in (("not json", "JSON"), ("[1]", "object"), ('{"cpu_pct":"high"}', "number"),
                          ('{"cpu_pct":250}', "0..100"), ('{"uptime_s":-5}', "within"),
                          ('{"voltage":3.3}', "unknown field"), ('{"metrics":{"Bad Name":1}}', "name"),
                          (many, "at most 32"), ("{}", "at least one")):
            self.assertEqual(d.publish("health/report", body), 0x99, body)
            err = d.wait("errors")
            self.assertEqual(err["code"], "bad_request", (body, err))
            self.assertIn(why, err["message"], (body, err))
        # Another device's channel: not authorized, nothing stored for it.
        self.assertEqual(d.publish(None, '{"cpu_pct":1}', topic="$fleetmq/v1/devices/b1/health/report"), 0x87)
        self.assertIsNone(self.admin("health.get", "device_id=b1")["report"])
        # Too close to the last one: acknowledged, answered rejected, not kept.
        time.sleep(2.1)  # a full budget: two reports at once, not three
        self.assertEqual(d.publish("health/report", '{"cpu_pct":44}'), 0)
        self.assertEqual(d.publish("health/report", '{"cpu_pct":43}'), 0)
        self.assertEqual(d.publish("health/report", '{"cpu_pct":99,"client_token":"fast"}'), 0)
        rej = d.wait("health/report/rejected")
        self.assertEqual(rej["error"]["code"], "rate_limited", rej)
        self.assertEqual(rej["client_token"], "fast")
        time.sleep(0.5)
        self.assertEqual(self.admin("health.get", "device_id=b0")["report"]["values"]["cpu_pct"], 43)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/health/rate_limited", 1,
                                             timeout=20), 1)



class LinkStatsTest(JobsBase):
    """What the broker observes of a device's connection, with no help from
    the device: counters reported every second here, the rest at close."""
    flags = ("--health.link_stats_interval_ms=1000",)

    def link(self, dev):
        return self.admin("health.get", "device_id=" + dev)["link"]

    def test_counters_disconnects_errors_and_uptime_from_real_connections(self):
        certs = self.fleet("k", 2)
        d = RawDevice(self, certs, "k0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/k0/#"), 0x01)
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/k1/#"), 0x87)  # denied: another device's channel
        self.assertEqual(d.publish("health/report", '{"cpu_pct":5}'), 0)
        self.assertEqual(d.publish(None, "{}", topic="$fleetmq/v1/devices/k1/jobs/update"), 0x87)
        time.sleep(1.1)
        self.assertEqual(d.publish(None, "x", topic="devices/k0/plain"), 0)  # traffic: the counters are due
        # While it is connected: counted up to its last report, uptime to now.
        self.assertTrue(wait_for(lambda: self.link("k0")["publish_in"] >= 3, timeout=10), self.link("k0"))
        ln = self.link("k0")
        self.assertEqual(ln["connects"], 1, ln)
        self.assertEqual(ln["denied"], 2, ln)
        self.assertGreater(ln["bytes_in"], 100, ln)
        self.assertGreater(ln["bytes_out"], 10, ln)
        self.assertGreaterEqual(ln["packets_out"], 5, ln)  # CONNACK, 2 SUBACK, 3 PUBACK
        self.assertEqual(ln["uptime"]["1h"], 1.0, ln)
        self.assertEqual(ln["disconnects"], {}, ln)
        # A protocol error: the rule it broke is its last error.
        d.s.sendall(b"\xf0\x00")
        self.assertTrue(wait_for(lambda: not self.admin("health.get", "device_id=k0")["online"], timeout=10))
        ln = self.link("k0")
        self.assertEqual(ln["disconnects"], {"protocol_error": 1}, ln)
        self.assertEqual(ln["protocol_errors"], 1, ln)
        self.assertEqual(ln["last_error"]["reason"], "protocol_error", ln)
        self.assertIn("MQTT", ln["last_error"]["detail"], ln)
        self.assertEqual(ln["publish_in"], 3, ln)
        # The audit entry of that disconnect names the rule too.
        gone = [e for e in self.admin("audit.query", "device_id=k0")["entries"] if e["action"] == "device.disconnected"]
        self.assertEqual(gone[-1]["details"]["reason"], "protocol_error", gone)
        self.assertEqual(gone[-1]["details"]["error"], ln["last_error"]["detail"], gone)
        # A real client's clean disconnect is counted, and is not an error.
        op = ["-h", "localhost", "-p", str(self.broker.tls_port), "--cafile", os.path.join(self.pki, "root.crt"),
              "--cert", os.path.join(certs, "k1.crt"), "--key", os.path.join(certs, "k1.key"), "-V", "mqttv5"]
        for i in range(2):
            r = run_cli(["mosquitto_pub"] + op + ["-i", "k1", "-q", "1", "-t", "devices/k1/x", "-m", "m%d" % i])
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: self.link("k1")["disconnects"].get("clean") == 2, timeout=10),
                        self.link("k1"))
        ln = self.link("k1")
        self.assertEqual((ln["connects"], ln["publish_in"], ln["denied"]), (2, 2, 0), ln)
        self.assertNotIn("last_error", ln)
        self.assertGreater(ln["uptime"]["1h"], 0, ln)
        self.assertLess(ln["uptime"]["1h"], 1, ln)  # offline between and after
        # Kept across a restart.
        self.broker.kill9_and_restart()
        self.assertEqual(self.link("k1")["connects"], 2)
        self.assertEqual(self.link("k0")["protocol_errors"], 1)

if __name__ == "__main__":
    unittest.main()
