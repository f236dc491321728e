"""Certificate renewal over MQTT against the real broker with real devices
(doc/device-api.md "Certificate renewal", doc/certificate-profile.md):
fleetmq-device agents asked on certs/renew make a new key, send a CSR, get a
certificate that openssl verifies against the chain, reconnect with it, and
the old one is revoked after the grace; automatic renewal enrols devices
whose certificate is inside the notice window; every CSR a device may not
send (unasked, another identity, another curve, a broken signature) is
refused with certs/csr/rejected and a counter, and issues nothing."""
import hashlib
import json
import os
import ssl
import socket
import subprocess
import time
import unittest

from harness import run_cli, sys_at_least, wait_for
from test_jobs import JobsBase, RawDevice


class RenewalBase(JobsBase):
    def enrol(self, prefix, n):
        """n devices registered from their own CSRs (so the registry holds
        their certificates): DIR/<id>.crt (certificate and chain) and .key."""
        certs = os.path.join(self.tmp, prefix)
        os.makedirs(certs, exist_ok=True)
        if not self.model:
            self.admin("model.create", "model_id=m1", "manufacturer=acme")
            self.admin("group.create", "group_id=g1", "name=g1")
            self.model = True
        out = {}
        for i in range(n):
            name = "%s%d" % (prefix, i)
            key, csr = os.path.join(certs, name + ".key"), os.path.join(certs, name + ".csr")
            r = run_cli(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                         "-nodes", "-keyout", key, "-subj", "/CN=" + name, "-out", csr])
            self.assertEqual(r.returncode, 0, r.stderr)
            d = self.admin("device.register", "device_id=" + name, "serial_number=sn-" + name, "model_id=m1",
                           "group_ids=g1", "csr=@" + csr)
            with open(os.path.join(certs, name + ".crt"), "w") as f:
                f.write(d["certificate_pem"] + d["ca_chain_pem"])
            out[name] = d["certificate_serial"]
        return certs, out

    def serial_of(self, path):
        r = run_cli(["openssl", "x509", "-in", path, "-noout", "-serial"])
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip().split("=")[1].lower().lstrip("0")

    def verify(self, certs, name):
        """openssl verifies the device's stored certificate against the root,
        with its tenant CA from the same file."""
        path = os.path.join(certs, name + ".crt")
        r = run_cli(["openssl", "verify", "-CAfile", os.path.join(self.pki, "root.crt"), "-untrusted", path, path])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(": OK", r.stdout)

    def tls_refused(self, crt, key, name):
        """A connection with this certificate gets no CONNACK 0x00."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(self.pki, "root.crt"))
        ctx.load_cert_chain(crt, key)
        try:
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5),
                                server_hostname="localhost")
            from harness import mqtt5_connect, read_packet
            s.sendall(mqtt5_connect(name))
            first, body = read_packet(s)
            s.close()
            return not (first == 0x20 and body[1] == 0)
        except (ssl.SSLError, OSError, ConnectionError, AssertionError):
            return True


class RenewalTest(RenewalBase):
    flags = ("--certs.renewal_grace_s=2",)

    def test_forced_renewal_of_real_devices(self):
        """cert.renew of two of three connected devices: both reconnect with
        a new certificate openssl verifies, the old ones are revoked after
        the 2 s grace and refused, the third is untouched, and the
        transparency log and audit chain hold it all with the SHA-256."""
        certs, first = self.enrol("r", 3)
        old_pem = {n: open(os.path.join(certs, n + ".crt")).read() for n in first}
        old_key = open(os.path.join(certs, "r0.key")).read()
        agent = self.agent("r", 3)
        self.connected(3)
        j = self.admin("cert.renew", "device_ids=r0,r1", "job_id=rn1")
        self.assertEqual(j["total"], 2)
        done = self.wait_job("rn1", ("COMPLETED",), timeout=60)
        self.assertEqual(done["counts"]["SUCCEEDED"], 2, done)
        ex = self.executions("rn1")
        for name in ("r0", "r1"):
            self.assertEqual(ex[name]["state"], "SUCCEEDED", ex[name])
            new_serial = self.serial_of(os.path.join(certs, name + ".crt"))
            self.assertNotEqual(new_serial, first[name])
            self.verify(certs, name)
            self.assertEqual(ex[name]["details"]["serial"], new_serial, ex[name])
            self.assertEqual(ex[name]["details"]["replaced"], first[name], ex[name])
            self.assertEqual(self.admin("device.get", "device_id=" + name)["cert_serial"], new_serial)
        self.assertEqual(self.serial_of(os.path.join(certs, "r2.crt")), first["r2"])
        # The old certificates: revoked once the grace passed, then refused.

        def revoked(name):
            certs_of = {c["serial"]: c for c in self.admin("cert.list", "device_id=" + name)["certificates"]}
            return certs_of[first[name]]["revoked_at_ms"] != 0
        self.assertTrue(wait_for(lambda: revoked("r0") and revoked("r1"), timeout=15, step=0.5))
        self.assertEqual(len(self.admin("cert.list", "device_id=r2")["certificates"]), 1)
        # The tenant's CRL follows (re-signed at most every 2 s per tenant).
        crl = os.path.join(self.pki, "tenants", "default", "crl.der")

        def in_crl():
            r = run_cli(["openssl", "crl", "-in", crl, "-inform", "DER", "-noout", "-text"])
            listed = r.stdout.replace(":", "").lower()
            return all(first[n].lstrip("0") in listed for n in ("r0", "r1"))
        self.assertTrue(wait_for(in_crl, timeout=10, step=0.5))
        old, key = os.path.join(self.tmp, "old-r0.crt"), os.path.join(self.tmp, "old-r0.key")
        with open(old, "w") as f:
            f.write(old_pem["r0"])
        with open(key, "w") as f:
            f.write(old_key)
        self.assertTrue(self.tls_refused(old, key, "r0"))
        self.connected(3)  # every device back, with its new certificate
        # Transparency log: issued (x3 + x2 renewals) and revoked (x2), each with the DER's SHA-256.
        log, cursor = [], ""
        while True:
            page = self.admin("cert.log", "limit=3", *(["cursor=" + cursor] if cursor else []))
            log += page["entries"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        events = sorted((e["event"], e["device_id"]) for e in log)
        self.assertEqual(events, sorted([("issued", "r0"), ("issued", "r1"), ("issued", "r2"), ("issued", "r0"),
                                         ("issued", "r1"), ("revoked", "r0"), ("revoked", "r1")]), log)
        der = subprocess.run(["openssl", "x509", "-in", os.path.join(certs, "r0.crt"), "-outform", "DER"],
                             capture_output=True).stdout
        new_r0 = self.serial_of(os.path.join(certs, "r0.crt"))
        entry = [e for e in log if e["serial"] == new_r0]
        self.assertEqual(entry[0]["sha256"], hashlib.sha256(der).hexdigest())
        audit = self.admin("audit.query", "device_id=r0")["entries"]
        actions = [e["action"] for e in audit]
        self.assertIn("cert.renewed", actions)
        self.assertIn("cert.revoked", actions)
        renewed = [e for e in audit if e["action"] == "cert.renewed"][0]
        self.assertEqual(renewed["details"]["sha256"], hashlib.sha256(der).hexdigest())
        self.assertTrue(self.admin("audit.verify")["valid"])
        s = self.stop_agent(agent)
        self.assertEqual(s["renewal"]["renewed"], 2, s)
        self.assertEqual(s["renewal"]["refused"], 0, s)

    def test_a_device_that_cannot_renew_fails_and_keeps_its_certificate(self):
        certs, first = self.enrol("f", 1)
        agent = self.agent("f", 1, "--renew-fail-pct", "100")
        self.connected(1)
        self.admin("cert.renew", "device_ids=f0", "job_id=rf")
        done = self.wait_job("rf", ("COMPLETED",), timeout=30)
        self.assertEqual(done["counts"]["FAILED"], 1, done)
        self.assertIn("key generation failed", json.dumps(self.executions("rf")["f0"]))
        self.assertEqual(len(self.admin("cert.list", "device_id=f0")["certificates"]), 1)
        self.assertEqual(self.serial_of(os.path.join(certs, "f0.crt")), first["f0"])
        self.stop_agent(agent)

    def test_bad_csrs_are_refused_counted_and_issue_nothing(self):
        certs, first = self.enrol("b", 2)
        d = RawDevice(self, certs, "b0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/b0/#"), 0x01)

        def csr(subject, curve="prime256v1"):
            path = os.path.join(self.tmp, "x.csr")
            r = run_cli(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:" + curve,
                         "-nodes", "-keyout", os.path.join(self.tmp, "x.key"), "-subj", subject, "-out", path])
            self.assertEqual(r.returncode, 0, r.stderr)
            return open(path).read()
        good = csr("/CN=b0")
        # Nobody asked: refused without a signature.
        self.assertEqual(d.publish("certs/csr", json.dumps({"job_id": "x", "attempt": 1, "csr": good})), 0)
        self.assertEqual(d.wait("certs/csr/rejected")["error"]["code"], "not_requested")
        # Schema errors: PUBACK 0x99 (payload format invalid) and an `errors` message.
        for body in ('{"job_id":"x","attempt":1}', '{"job_id":"x","attempt":0,"csr":"a"}',
                     '{"job_id":"x","attempt":1,"csr":"%s"}' % ("A" * 5000), "not json",
                     '{"job_id":"x","attempt":1,"csr":"a","error":"b"}', '{"job_id":"x","attempt":1,"csr":"a","z":1}'):
            self.assertEqual(d.publish("certs/csr", body), 0x99, body)
        # Asked (max 4 attempts, at once): each bad CSR fails its attempt.
        self.admin("cert.renew", "device_ids=b0", "job_id=rb", 'retry={"max_attempts":4,"backoff_ms":100}')
        bad = [csr("/CN=b1"), csr("/CN=b0/O=other"), csr("/CN=b0", "secp384r1"),
               good.replace(good.splitlines()[3], good.splitlines()[3][:-4] + "AAAA")]
        for i, pem in enumerate(bad):
            req = d.wait("certs/renew", timeout=10)
            self.assertEqual(req["attempt"], i + 1, req)
            self.assertEqual(req["serial"], first["b0"])
            d.publish("certs/csr", json.dumps({"job_id": "rb", "attempt": req["attempt"], "csr": pem}))
            rej = d.wait("certs/csr/rejected")
            self.assertEqual(rej["error"]["code"], "bad_csr", rej)
        done = self.wait_job("rb", ("COMPLETED",), timeout=20)
        self.assertEqual(done["counts"]["FAILED"], 1, done)
        self.assertEqual(len(self.admin("cert.list", "device_id=b0")["certificates"]), 1)
        self.assertEqual(len(self.admin("cert.list", "device_id=b1")["certificates"]), 1)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/certs/renewal_csrs_refused", 5),
                                5)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/management/certs/renewal_csrs_invalid", 4),
                                4)
        # A second CSR for an attempt already issued is refused too.
        self.admin("cert.renew", "device_ids=b0", "job_id=rb2")
        req = d.wait("certs/renew", timeout=10)
        d.publish("certs/csr", json.dumps({"job_id": "rb2", "attempt": req["attempt"], "csr": good}))
        acc = d.wait("certs/csr/accepted")
        self.assertIn("BEGIN CERTIFICATE", acc["certificate_pem"])
        d.publish("certs/csr", json.dumps({"job_id": "rb2", "attempt": req["attempt"], "csr": good}))
        self.assertEqual(d.wait("certs/csr/rejected")["error"]["code"], "already_issued")
        self.assertEqual(len(self.admin("cert.list", "device_id=b0")["certificates"]), 2)


class AutoRenewalTest(RenewalBase):
    flags = ("--certs.device_validity_days=10", "--certs.renewal_grace_s=1")

    def test_certificates_inside_the_window_are_renewed_automatically(self):
        """Certificates issued for 10 days (inside the 30-day notice; with
        that validity automatic renewal is off, or it would never end). The
        broker comes back issuing 2-year certificates: the devices whose
        certificate is inside the window are enrolled in auto-renew, renewed
        when they connect, and the job stays open for the next ones."""
        certs, first = self.enrol("a", 2)
        self.assertIn("automatic certificate renewal is off", self.broker.read_log())
        self.broker.flags = [f for f in self.broker.flags if not f.startswith("--certs.device_validity_days")]
        self.broker.kill9_and_restart()
        agent = self.agent("a", 2)
        self.connected(2)

        def renewed():
            try:
                j = self.admin("job.get", "job_id=auto-renew")
            except AssertionError:
                return False
            return j["counts"].get("SUCCEEDED", 0) == 2
        self.assertTrue(wait_for(renewed, timeout=60, step=0.5))
        j = self.admin("job.get", "job_id=auto-renew")
        self.assertEqual(j["status"], "IN_PROGRESS", j)
        for name in first:
            self.verify(certs, name)
            self.assertNotEqual(self.serial_of(os.path.join(certs, name + ".crt")), first[name])

            def current():
                return [c for c in self.admin("cert.list", "device_id=" + name)["certificates"]
                        if c["revoked_at_ms"] == 0]
            self.assertTrue(wait_for(lambda: len(current()) == 1, timeout=10, step=0.3), current())
            cur = current()
            self.assertGreater((cur[0]["expires_at_ms"] / 1000.0 - time.time()) / 86400, 700)
        self.connected(2)
        # Nothing is due again: a restart enrols no one.
        self.stop_agent(agent)
        self.broker.kill9_and_restart()
        time.sleep(2)
        j = self.admin("job.get", "job_id=auto-renew")
        self.assertEqual(j["counts"].get("SUCCEEDED", 0), 2, j)
        self.assertEqual(j["total"], 2, j)


if __name__ == "__main__":
    unittest.main()
