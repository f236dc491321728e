"""Firmware over the air end to end (doc/ota.md, doc/device-api.md
"Firmware"): the real broker, real fleetmq-device agents over mutual TLS,
fleetmq-admin firmware.upload. A campaign in waves whose first wave fails
pauses at its gate and is rolled back; the abort threshold's rollback
action; a download resumed after a disconnect; a firmware that never boots
(TIMED_OUT at the reboot deadline); a device-side rollback; a corrupted
download; kill -9 of the broker mid-campaign; the signed manifest checked
with openssl; every bad upload, block request and version report with its
code."""
import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
import unittest

from harness import run_cli, wait_for, read_packet, parse_publish
from test_jobs import JobsBase, RawDevice, SANITIZED

FLEET = 20 if SANITIZED else 40


def image(n, seed=1):
    """n bytes that are not all alike (so a corrupted block shows)."""
    out = bytearray()
    h = hashlib.sha256(b"fw-%d" % seed).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


class BinDevice(RawDevice):
    """A RawDevice whose downlink may be binary (ota/data/<offset>)."""

    def _until(self, ptype):
        while True:
            first, body = read_packet(self.s)
            if first & 0xF0 == 0x30:
                topic, pid, payload = parse_publish(body)
                self.s.sendall(b"\x40\x02" + pid)
                try:
                    p = json.loads(payload)
                except ValueError:
                    p = bytes(payload)
                self.inbox.append((topic, p))
                continue
            if first & 0xF0 == ptype:
                return body


class OtaBase(JobsBase):
    def upload(self, version, data, model="m1", **extra):
        path = os.path.join(self.tmp, "fw-%s-%s.bin" % (model, version))
        with open(path, "wb") as f:
            f.write(data)
        args = ["firmware.upload", "model_id=" + model, "version=" + version, "file=@" + path]
        args += ["%s=%s" % kv for kv in extra.items()]
        return self.admin(*args, timeout=60)

    def ota_log(self, *agents):
        """Every firmware event of each device, in order: device → [(status, version, reason)]."""
        out = {}
        for a in agents:
            if os.path.exists(a.log_path):
                with open(a.log_path) as f:
                    for line in f:
                        e = json.loads(line)
                        if "ota" in e:
                            out.setdefault(e["device"], []).append((e["status"], e["version"], e["reason"]))
        return out

    def firmware_of(self, device):
        return self.admin("device.get", "device_id=" + device)["firmware_version"]


class CampaignTest(OtaBase):
    def test_waves_gate_pauses_and_operator_rolls_back(self):
        """Three waves with a 90 % success gate; the image fails to install
        on a third of the devices: wave 1 ends under the gate and the campaign
        pauses before wave 2 (nobody past wave 1 was offered anything);
        ota.rollback returns every device wave 1 updated to 1.0.0."""
        self.fleet("w", FLEET)
        self.upload("1.0.0", image(40_000, seed=0))
        up = self.upload("2.0.0", image(300_000), notes="faster boot")
        self.assertEqual(up["size"], 300_000)
        self.assertEqual(up["sha256"], hashlib.sha256(image(300_000)).hexdigest())
        agent = self.agent("w", FLEET, "--ota-fail-pct", "34", "--seed", "7")
        self.connected(FLEET, timeout=120)
        self.assertTrue(wait_for(lambda: self.firmware_of("w0") == "1.0.0", timeout=20))
        r = self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=camp",
                       'rollout={"waves":[{"count":10},{"percent":50},{"percent":50}],"success_gate_pct":90,'
                       '"rate_per_s":50}', 'timeouts={"reboot_s":20}')
        self.assertEqual(r["job_id"], "camp")
        j = self.wait_job("camp", ("PAUSED", "COMPLETED"), timeout=90)
        self.assertEqual(j["status"], "PAUSED", j)
        self.assertIn("wave 1 of 3", j["reason"])
        self.assertEqual(j["wave"]["current"], 2, j)
        done = j["counts"]["SUCCEEDED"] + j["counts"]["FAILED"]
        self.assertEqual(done, 10, j["counts"])  # wave 1 only
        self.assertGreater(j["counts"]["FAILED"], 1, j["counts"])
        ex = self.executions("camp")
        updated = [d for d, e in ex.items() if e["state"] == "SUCCEEDED"]
        failed = [d for d, e in ex.items() if e["state"] == "FAILED"]
        for d in updated:
            self.assertEqual(self.firmware_of(d), "2.0.0", d)
        for d in failed:
            self.assertIn("install", json.dumps(ex[d]), ex[d])
            self.assertEqual(self.firmware_of(d), "1.0.0", d)
        queued = [d for d, e in ex.items() if e["state"] == "QUEUED"]
        self.assertEqual(len(queued), FLEET - 10)
        # Roll the campaign back: only the devices it moved, each to what it had.
        self.admin("job.cancel", "job_id=camp")
        rb = self.admin("ota.rollback", "job_id=camp")
        self.assertEqual(rb["total"], len(updated))
        j2 = self.wait_job(rb["job_id"], ("COMPLETED",), timeout=90)
        self.assertEqual(j2["counts"]["SUCCEEDED"], len(updated), j2["counts"])
        for d in updated:
            self.assertEqual(self.firmware_of(d), "1.0.0", d)
        hist = self.admin("audit.query", "device_id=" + updated[0])["entries"]
        moves = [json.loads(e["details"]) if isinstance(e["details"], str) else e["details"] for e in hist
                 if e["action"] == "firmware.version"]
        self.assertTrue(any(m["to"] == "2.0.0" for m in moves), moves)
        self.assertTrue(any(m["to"] == "1.0.0" and m["job_id"] == rb["job_id"] for m in moves), moves)
        s = self.stop_agent(agent)
        self.assertEqual(s["ota"]["bad_manifest"], 0, s)

    def test_abort_threshold_rolls_back_by_itself(self):
        """abort.action=rollback: past the failure threshold the campaign is
        ABORTED and a rollback job returns the devices it updated."""
        self.fleet("a", FLEET)
        self.upload("1.0.0", image(20_000, seed=0))
        self.upload("2.0.0", image(100_000))
        agent = self.agent("a", FLEET, "--ota-rollback-pct", "40", "--seed", "3")
        self.connected(FLEET, timeout=120)
        self.assertTrue(wait_for(lambda: self.firmware_of("a1") == "1.0.0", timeout=20))
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=ab",
                   'rollout={"rate_per_s":20,"max_in_flight":4}',
                   'abort={"threshold_pct":20,"min_executed":5,"action":"rollback"}')
        j = self.wait_job("ab", ("ABORTED", "COMPLETED"), timeout=90)
        self.assertEqual(j["status"], "ABORTED", j)
        self.assertGreater(j["counts"]["ROLLED_BACK"], 0, j["counts"])
        # Devices already updating finish first (no flash write is cut short); then the rollback job.
        self.assertTrue(wait_for(lambda: self.admin("job.get", "job_id=ab-rollback", ok=False).returncode == 0,
                                 timeout=60, step=0.3))
        rb = self.wait_job("ab-rollback", ("COMPLETED",), timeout=90)
        j = self.admin("job.get", "job_id=ab")
        self.assertEqual(rb["counts"]["SUCCEEDED"], j["counts"]["SUCCEEDED"], (rb, j))
        for d, e in self.executions("ab").items():
            self.assertEqual(self.firmware_of(d), "1.0.0", (d, e))
        self.stop_agent(agent)


class WindowTest(OtaBase):
    def test_maintenance_window_holds_the_campaign_until_it_opens(self):
        """A campaign whose daily window (in a named zone) is closed now
        offers nothing and says when the window opens; one whose window is
        open now runs to its end."""
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo
        n = 6
        self.fleet("m", n)
        self.upload("1.0.0", image(20_000, seed=0))
        self.upload("2.0.0", image(60_000))
        agent = self.agent("m", n)
        self.connected(n, timeout=60)
        self.assertTrue(wait_for(lambda: self.firmware_of("m0") == "1.0.0", timeout=20))
        zone = "Asia/Tokyo"
        local = datetime.now(ZoneInfo(zone)).replace(second=0, microsecond=0)
        hhmm = lambda t: t.strftime("%H:%M")
        later = local + timedelta(hours=2)
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=shut",
                   'rollout={"window":{"start":"%s","end":"%s","time_zone":"%s"}}'
                   % (hhmm(later), hhmm(later + timedelta(hours=1)), zone))
        time.sleep(3)
        j = self.admin("job.get", "job_id=shut")
        self.assertEqual(j["status"], "IN_PROGRESS", j)
        self.assertFalse(j["window"]["open"], j)
        self.assertEqual(j["window"]["time_zone"], zone)
        self.assertEqual(j["window"]["opens_at_ms"], int(later.timestamp() * 1000), j)
        self.assertEqual(j["counts"]["SENT"] + j["counts"]["IN_PROGRESS"] + j["counts"]["SUCCEEDED"], 0, j)
        self.assertEqual(self.firmware_of("m0"), "1.0.0")
        self.admin("job.cancel", "job_id=shut")
        earlier = local - timedelta(hours=1)
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=open",
                   'rollout={"window":{"start":"%s","end":"%s","time_zone":"%s"}}'
                   % (hhmm(earlier), hhmm(earlier + timedelta(hours=3)), zone))
        j = self.wait_job("open", ("COMPLETED",), timeout=90)
        self.assertEqual(j["counts"]["SUCCEEDED"], n, j)
        self.assertTrue(j["window"]["open"], j)
        bad = self.admin("ota.create", "model_id=m1", "version=1.0.0", "all=true",
                         'rollout={"window":{"start":"01:00","end":"02:00","time_zone":"Mars/Base"}}', ok=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("unknown time zone", bad.stdout + bad.stderr)
        self.stop_agent(agent)


class GroupTargetTest(OtaBase):
    def test_group_target_version_updates_members_and_later_joiners(self):
        """group.update firmware_target_version=V starts a continuous
        campaign: the members are updated, a device added to the group later
        is updated too; a new target cancels the old campaign."""
        self.fleet("t", 4, groups=("fld",))
        self.admin("device.set_groups", "device_id=t3", "group_ids=")
        self.upload("2.0.0", image(30_000))
        agent = self.agent("t", 4)
        self.connected(4, timeout=60)
        r = self.admin("group.update", "group_id=fld", "firmware_target_version=2.0.0")
        self.assertEqual(len(r["firmware"]["campaigns"]), 1, r)
        camp = r["firmware"]["campaigns"][0]
        self.assertTrue(wait_for(lambda: all(self.firmware_of("t%d" % i) == "2.0.0" for i in range(3)), timeout=60))
        self.assertEqual(self.firmware_of("t3"), "1.0.0")
        self.admin("device.set_groups", "device_id=t3", "group_ids=fld")
        self.assertTrue(wait_for(lambda: self.firmware_of("t3") == "2.0.0", timeout=60))
        self.assertEqual(self.admin("job.get", "job_id=" + camp)["status"], "IN_PROGRESS")  # continuous
        # A target without an image yet: recorded, the old campaign ends, nothing new starts.
        r = self.admin("group.update", "group_id=fld", "firmware_target_version=9.9")
        self.assertEqual(r["firmware"]["canceled"], [camp])
        self.assertEqual(r["firmware"]["campaigns"], [])
        self.assertIn("no firmware 9.9", r["firmware"]["note"])
        self.assertEqual(self.admin("group.get", "group_id=fld")["firmware_target_version"], "9.9")
        self.wait_job(camp, ("CANCELED",), timeout=20)
        self.stop_agent(agent)


class DeliveryTest(OtaBase):
    def test_resume_after_disconnect_mid_download(self):
        """The device drops its connection halfway: after the reconnect it
        gets the same offer and resumes at the byte it has; it downloads the
        image once, not one and a half times."""
        self.fleet("r", 3)
        size = 600_000
        self.upload("2.0.0", image(size))
        agent = self.agent("r", 3, "--ota-drop-pct", "100", "--block", "16384")
        self.connected(3, timeout=60)
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "device_ids=r0,r1,r2", "job_id=res")
        j = self.wait_job("res", ("COMPLETED",), timeout=60)
        self.assertEqual(j["counts"]["SUCCEEDED"], 3, j["counts"])
        s = self.stop_agent(agent)
        self.assertGreaterEqual(s["ota"]["resumed"], 3, s)
        self.assertLess(s["ota"]["bytes"], 3 * size * 1.1, s)
        self.assertGreaterEqual(s["ota"]["bytes"], 3 * size, s)
        for d in ("r0", "r1", "r2"):
            self.assertEqual(self.firmware_of(d), "2.0.0")

    def test_firmware_that_never_boots_times_out_at_the_reboot_deadline(self):
        """Devices install and never come back: each execution is TIMED_OUT
        once the reboot deadline passed, with no help from the device."""
        self.fleet("n", 3)
        self.upload("2.0.0", image(50_000))
        agent = self.agent("n", 3, "--ota-never-pct", "100")
        self.connected(3, timeout=60)
        t0 = time.time()
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=never",
                   'timeouts={"reboot_s":3}')
        j = self.wait_job("never", ("COMPLETED",), timeout=40)
        took = time.time() - t0
        self.assertEqual(j["counts"]["TIMED_OUT"], 3, j["counts"])
        self.assertGreaterEqual(took, 3)
        self.assertLess(took, 15)
        ex = self.executions("never")
        self.assertIn("rebooting", json.dumps(ex["n0"]), ex["n0"])
        s = self.stop_agent(agent)
        self.assertEqual(s["ota"]["never_back"], 3, s)

    def test_corrupt_download_and_device_side_rollback(self):
        """A corrupted download is FAILED (hash_mismatch) and the device keeps
        its version; an A/B device that boots back into its old slot is
        ROLLED_BACK."""
        self.fleet("c", 2)
        self.upload("2.0.0", image(70_000))
        bad = self.agent("c", 1, "--ota-corrupt-pct", "100")
        ab = self.agent("c", 1, "--ota-rollback-pct", "100", start=1)
        self.connected(2, timeout=60)
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=cr")
        self.wait_job("cr", ("COMPLETED",), timeout=60)
        ex = self.executions("cr")
        self.assertEqual(ex["c0"]["state"], "FAILED", ex["c0"])
        self.assertIn("hash_mismatch", json.dumps(ex["c0"]))
        self.assertEqual(ex["c1"]["state"], "ROLLED_BACK", ex["c1"])
        self.assertNotEqual(self.firmware_of("c0"), "2.0.0")
        self.stop_agent(bad)
        self.stop_agent(ab)

    def test_kill9_mid_campaign_every_device_ends_updated(self):
        """kill -9 of the broker while a campaign runs: after the restart the
        devices reconnect and the campaign completes, every device updated."""
        self.fleet("k", FLEET)
        self.upload("2.0.0", image(200_000))
        agent = self.agent("k", FLEET, "--block", "8192")
        self.connected(FLEET, timeout=120)
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "all=true", "job_id=kc",
                   'rollout={"rate_per_s":8}')
        self.assertTrue(wait_for(lambda: self.admin("job.get", "job_id=kc")["counts"]["SUCCEEDED"] >= 3,
                                 timeout=60, step=0.2))
        self.broker.kill9_and_restart()
        self.assertTrue(wait_for(lambda: self.admin("job.get", "job_id=kc")["status"] == "COMPLETED", timeout=180,
                                 step=0.5), (agent.poll(), self.admin("job.get", "job_id=kc")))
        j = self.wait_job("kc", ("COMPLETED",), timeout=10)
        self.assertEqual(j["counts"]["SUCCEEDED"], FLEET, j["counts"])
        for i in (0, FLEET // 2, FLEET - 1):
            self.assertEqual(self.firmware_of("k%d" % i), "2.0.0")
        self.stop_agent(agent)


class ArtifactTest(OtaBase):
    def test_manifest_signature_verifies_with_openssl(self):
        """The manifest is signed by the tenant's firmware signer, which
        chains to the platform root through the tenant CA: openssl checks
        both the chain and the signature."""
        data = image(10_000)
        self.admin("model.create", "model_id=m1", "manufacturer=acme")
        self.upload("3.1.0", data, url="https://cdn.example/fw.bin")
        g = self.admin("firmware.get", "model_id=m1", "version=3.1.0")
        m = json.loads(g["manifest"])
        self.assertEqual(m["tenant"], "default")
        self.assertEqual(m["sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(m["size"], len(data))
        self.assertEqual(m["url"], "https://cdn.example/fw.bin")
        d = self.tmp
        certs = g["signer"].split("-----END CERTIFICATE-----")
        with open(os.path.join(d, "signer.pem"), "w") as f:
            f.write(certs[0] + "-----END CERTIFICATE-----\n")
        with open(os.path.join(d, "tenant-ca.pem"), "w") as f:
            f.write(certs[1].lstrip() + "-----END CERTIFICATE-----\n")
        with open(os.path.join(d, "manifest.json"), "w") as f:
            f.write(g["manifest"])
        with open(os.path.join(d, "sig.der"), "wb") as f:
            f.write(base64.b64decode(g["signature"]))
        v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(self.pki, "root.crt"), "-untrusted",
                            os.path.join(d, "tenant-ca.pem"), "-purpose", "any", os.path.join(d, "signer.pem")],
                           capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        x = subprocess.run(["openssl", "x509", "-in", os.path.join(d, "signer.pem"), "-noout", "-text"],
                           capture_output=True, text=True).stdout
        self.assertIn("Code Signing", x)
        self.assertIn("OU = signer", x)
        subprocess.run(["openssl", "x509", "-in", os.path.join(d, "signer.pem"), "-pubkey", "-noout", "-out",
                        os.path.join(d, "pub.pem")], check=True)
        s = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(d, "pub.pem"), "-signature",
                            os.path.join(d, "sig.der"), os.path.join(d, "manifest.json")],
                           capture_output=True, text=True)
        self.assertEqual(s.returncode, 0, s.stdout + s.stderr)
        self.assertIn("Verified OK", s.stdout)
        # A changed byte does not verify.
        with open(os.path.join(d, "manifest.json"), "a") as f:
            f.write(" ")
        s = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(d, "pub.pem"), "-signature",
                            os.path.join(d, "sig.der"), os.path.join(d, "manifest.json")],
                           capture_output=True, text=True)
        self.assertNotEqual(s.returncode, 0)

    def test_bad_uploads_leave_nothing_behind(self):
        self.admin("model.create", "model_id=m1", "manufacturer=acme")
        data = image(150_000)
        real = hashlib.sha256(data).hexdigest()
        wrong = hashlib.sha256(b"not it").hexdigest()
        chunk = 65536

        def cmd(**c):
            r = run_cli([self.admin_bin(), "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port),
                         "--json", "--raw", json.dumps({"commands": [c]})], timeout=30)
            return json.loads(r.stdout)["responses"][0] if r.stdout.strip().startswith("{") else {"raw": r.stderr}

        # A wrong hash: refused at commit, and everything uploaded is gone.
        b = cmd(command="firmware.upload.begin", model_id="m1", version="4.0", size=len(data), sha256=wrong)
        self.assertEqual(b["status"], "ok", b)
        for off in range(0, len(data), chunk):
            r = cmd(command="firmware.upload.chunk", sha256=wrong, offset=off,
                    data=base64.b64encode(data[off:off + chunk]).decode())
            self.assertEqual(r["status"], "ok", r)
        c = cmd(command="firmware.upload.commit", sha256=wrong)
        self.assertEqual(c["error"]["code"], "invalid_argument", c)
        self.assertIn("discarded", c["error"]["message"])
        self.assertEqual(self.admin("firmware.list")["firmware"], [])
        again = cmd(command="firmware.upload.begin", model_id="m1", version="4.0", size=len(data), sha256=wrong)
        self.assertEqual(again["data"]["received"], 0, again)
        self.assertFalse(again["data"]["resumed"])
        cmd(command="firmware.upload.abort", sha256=wrong)
        # Out of order, a wrong chunk size, bad base64.
        cmd(command="firmware.upload.begin", model_id="m1", version="4.0", size=len(data), sha256=real)
        r = cmd(command="firmware.upload.chunk", sha256=real, offset=chunk, data=base64.b64encode(b"x").decode())
        self.assertEqual(r["error"]["code"], "invalid_transition", r)
        r = cmd(command="firmware.upload.chunk", sha256=real, offset=0, data=base64.b64encode(b"short").decode())
        self.assertEqual(r["error"]["code"], "invalid_argument", r)
        r = cmd(command="firmware.upload.chunk", sha256=real, offset=0, data="***")
        self.assertEqual(r["error"]["code"], "invalid_argument", r)
        # Resumable: one chunk, then the CLI finishes the rest from there.
        r = cmd(command="firmware.upload.chunk", sha256=real, offset=0, data=base64.b64encode(data[:chunk]).decode())
        self.assertEqual(r["data"]["received"], chunk, r)
        path = os.path.join(self.tmp, "img.bin")
        with open(path, "wb") as f:
            f.write(data)
        out = run_cli([self.admin_bin(), "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port),
                       "firmware.upload", "model_id=m1", "version=4.0", "file=@" + path], timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("resuming at byte %d" % chunk, out.stderr)
        self.assertEqual(self.admin("firmware.get", "model_id=m1", "version=4.0")["sha256"], real)
        # Over the size limit, an unknown model, the same version twice, a bad sha256.
        big = cmd(command="firmware.upload.begin", model_id="m1", version="5.0", size=1 << 40, sha256=real)
        self.assertEqual(big["error"]["code"], "invalid_argument", big)
        self.assertIn("max_artifact_bytes", big["error"]["message"])
        nom = cmd(command="firmware.upload.begin", model_id="nope", version="5.0", size=10, sha256=real)
        self.assertEqual(nom["error"]["code"], "not_found", nom)
        dup = cmd(command="firmware.upload.begin", model_id="m1", version="4.0", size=len(data), sha256=real)
        self.assertEqual(dup["error"]["code"], "already_exists", dup)
        bad = cmd(command="firmware.upload.begin", model_id="m1", version="5.0", size=10, sha256="XYZ")
        self.assertEqual(bad["error"]["code"], "invalid_argument", bad)
        # A campaign over an incompatible model, and deleting what a campaign uses.
        self.admin("model.create", "model_id=m2", "manufacturer=acme")
        self.admin("device.register", "device_id=other", "serial_number=sn-o", "model_id=m2")
        r = self.admin("ota.create", "model_id=m1", "version=4.0", "device_ids=other", ok=False)
        self.assertEqual(self.error_code(r), "invalid_transition")
        self.admin("device.register", "device_id=mine", "serial_number=sn-m", "model_id=m1")
        self.admin("ota.create", "model_id=m1", "version=4.0", "device_ids=mine", "job_id=uses")
        r = self.admin("firmware.delete", "model_id=m1", "version=4.0", ok=False)
        self.assertEqual(self.error_code(r), "invalid_transition")
        r = self.admin("job.create", 'document={"x":1}', "device_ids=mine", 'abort={"action":"rollback"}', ok=False)
        self.assertEqual(self.error_code(r), "invalid_argument")
        self.admin("job.cancel", "job_id=uses")
        self.assertTrue(wait_for(lambda: self.admin("firmware.delete", "model_id=m1", "version=4.0",
                                                    ok=False).returncode == 0, timeout=10))
        self.assertEqual(self.admin("firmware.list")["firmware"], [])

    def admin_bin(self):
        from test_jobs import ADMIN
        return ADMIN


class DeviceInputTest(OtaBase):
    def test_block_requests_and_version_reports(self):
        """Blocks only of the image offered to this device, within its size;
        the bytes served are the image's; malformed requests get 0x99; a
        version never offered is refused."""
        certs = self.fleet("b", 2)
        data = image(100_000)
        self.upload("2.0.0", data)
        sha = hashlib.sha256(data).hexdigest()
        d = BinDevice(self, certs, "b0")
        self.assertEqual(d.subscribe("$fleetmq/v1/devices/b0/#"), 1)

        def block(offset, length, s=sha):
            return d.publish("ota/block", json.dumps({"sha256": s, "offset": offset, "length": length}))
        # Nothing offered yet.
        self.assertEqual(block(0, 1000), 0)
        self.assertEqual(d.wait("ota/block/rejected")["error"]["code"], "not_assigned")
        self.admin("ota.create", "model_id=m1", "version=2.0.0", "device_ids=b0", "job_id=blk")
        offer = d.wait("ota/notify", timeout=10)
        self.assertEqual(offer["sha256"], sha)
        self.assertEqual(offer["size"], len(data))
        self.assertEqual(block(0, 4096), 0)
        got = d.wait("ota/data/0")
        self.assertEqual(got, data[:4096])
        self.assertEqual(block(98_000, 65536), 0)  # clipped at the end
        self.assertEqual(d.wait("ota/data/98000"), data[98_000:])
        self.assertEqual(block(len(data), 10), 0)
        self.assertEqual(d.wait("ota/block/rejected")["error"]["code"], "out_of_range")
        self.assertEqual(block(0, 10, s="0" * 64), 0)  # another image (e.g. another tenant's)
        self.assertEqual(d.wait("ota/block/rejected")["error"]["code"], "not_assigned")
        for bad in ({"sha256": sha, "offset": 0, "length": 0}, {"sha256": sha, "offset": 0, "length": 1 << 20},
                    {"sha256": sha, "offset": -1, "length": 10}, {"sha256": "x", "offset": 0, "length": 10},
                    {"sha256": sha, "offset": 0, "length": 10, "extra": 1}):
            self.assertEqual(d.publish("ota/block", json.dumps(bad)), 0x99, bad)
            self.assertEqual(d.wait("errors")["code"], "bad_request")
        self.assertEqual(d.publish("ota/report", json.dumps({"job_id": "blk", "attempt": 1, "phase": "exploded"})),
                         0x99)
        d.wait("errors")
        self.assertEqual(d.publish("ota/report", json.dumps({"job_id": "zzz", "attempt": 1, "phase": "installing"})), 0)
        self.assertEqual(d.wait("ota/report/rejected")["error"]["code"], "not_found")
        # A version never offered, during the update: refused, nothing changes.
        self.assertEqual(d.publish("ota/version", json.dumps({"version": "9.9.9"})), 0)
        self.assertEqual(d.wait("ota/version/rejected")["error"]["code"], "unexpected_version")
        self.assertNotEqual(self.firmware_of("b0"), "9.9.9")
        self.assertEqual(self.admin("job.get", "job_id=blk")["counts"]["SUCCEEDED"], 0)
        # The new version reported: SUCCEEDED, and the registry knows it.
        self.assertEqual(d.publish("ota/version", json.dumps({"version": "2.0.0"})), 0)
        self.assertEqual(self.wait_job("blk", ("COMPLETED",), timeout=10)["counts"]["SUCCEEDED"], 1)
        self.assertTrue(wait_for(lambda: self.firmware_of("b0") == "2.0.0", timeout=5))
        # A flood of block requests from a device with nothing offered: each refused, the broker fine.
        for i in range(200):
            block(i * 100, 100)
        self.assertEqual(self.admin("job.get", "job_id=blk")["status"], "COMPLETED")


if __name__ == "__main__":
    unittest.main()
