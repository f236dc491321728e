"""The PKI checked by the openssl CLI: certificates issued by fleetmq-pki
from openssl-made CSRs verify under the root through the tenant CA, carry
the profile (EKU, SAN URI, key usage), and the tenant CA's DER CRL verifies
and makes `openssl verify -crl_check` reject the revoked certificate."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import FLEETMQ, run_cli

PKI = os.environ.get("FLEETMQ_PKI_BIN", os.path.join(os.path.dirname(FLEETMQ), "..", "tools", "fleetmq-pki"))


class Pki(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fleetmq-pki-")
        r = run_cli([PKI, "init", "--dir", self.dir])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.pki = os.path.join(self.dir, "pki")
        self.tenant = os.path.join(self.pki, "tenants", "default")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def device(self, name, subject=None):
        key, csr, crt = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".crt")
        r = run_cli(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", key, "-subj", subject or "/CN=%s/O=default" % name, "-out", csr])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_cli([PKI, "issue", "--dir", self.dir, "--tenant", "default", "--device", name, "--csr", csr])
        if r.returncode == 0:
            with open(crt, "w") as f:
                f.write(r.stdout)
        return r, crt

    def test_files_and_modes(self):
        for f in ("root.crt", "root.key", "server.crt", "server.key", "operator.crt", "operator.key"):
            self.assertTrue(os.path.exists(os.path.join(self.pki, f)), f)
        for f in ("root.key", "server.key", "operator.key", "tenants/default/ca.key"):
            self.assertEqual(os.stat(os.path.join(self.pki, f)).st_mode & 0o777, 0o600, f)
        before = open(os.path.join(self.pki, "root.crt")).read()
        self.assertEqual(run_cli([PKI, "init", "--dir", self.dir]).returncode, 0)
        self.assertEqual(open(os.path.join(self.pki, "root.crt")).read(), before)  # kept, not replaced

    def test_device_certificate_verifies_and_has_the_profile(self):
        r, crt = self.device("dev-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        v = run_cli(["openssl", "verify", "-CAfile", os.path.join(self.pki, "root.crt"),
                     "-untrusted", os.path.join(self.tenant, "ca.crt"), crt])
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        text = run_cli(["openssl", "x509", "-in", crt, "-noout", "-text"]).stdout
        self.assertIn("TLS Web Client Authentication", text)
        self.assertIn("URI:urn:fleetmq:default:device:dev-1", text)
        self.assertIn("CA:FALSE", text)
        self.assertIn("Digital Signature", text)
        self.assertIn("prime256v1", text)
        self.assertIn("ecdsa-with-SHA256", text)
        for leaf, eku in (("server.crt", "TLS Web Server Authentication"), ("operator.crt", "TLS Web Client Authentication")):
            path = os.path.join(self.pki, leaf)
            v = run_cli(["openssl", "verify", "-CAfile", os.path.join(self.pki, "root.crt"),
                         "-untrusted", os.path.join(self.tenant, "ca.crt"), path])
            self.assertEqual(v.returncode, 0, leaf + v.stdout + v.stderr)
            self.assertIn(eku, run_cli(["openssl", "x509", "-in", path, "-noout", "-text"]).stdout)

    def test_forbidden_csrs_are_refused(self):
        r, _ = self.device("dev-2", subject="/CN=someone-else/O=default")
        self.assertEqual(r.returncode, 1)
        self.assertIn("CN", r.stderr)
        r, _ = self.device("dev-3", subject="/CN=dev-3/O=acme")
        self.assertEqual(r.returncode, 1)
        self.assertIn("another tenant", r.stderr)
        garbage = self.path("garbage.csr")
        with open(garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n")
        r = run_cli([PKI, "issue", "--dir", self.dir, "--device", "d", "--csr", garbage])
        self.assertEqual(r.returncode, 1)
        self.assertIn("malformed CSR", r.stderr)

    def test_crl_verifies_and_revokes(self):
        _, revoked = self.device("dev-r")
        _, kept = self.device("dev-k")
        serial = run_cli(["openssl", "x509", "-in", revoked, "-noout", "-serial"]).stdout.strip().split("=")[1].lower()
        crl_der = self.path("crl.der")
        with open(crl_der, "wb") as f:
            r = subprocess.run([PKI, "crl", "--dir", self.dir, "--serial", serial, "--number", "3"], capture_output=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            f.write(r.stdout)
        c = run_cli(["openssl", "crl", "-inform", "DER", "-in", crl_der, "-CAfile", os.path.join(self.tenant, "ca.crt"), "-noout"])
        self.assertIn("verify OK", c.stdout + c.stderr)
        text = run_cli(["openssl", "crl", "-inform", "DER", "-in", crl_der, "-noout", "-text"]).stdout
        self.assertIn(serial.upper().lstrip("0"), text.replace(":", "").upper())
        self.assertIn("X509v3 CRL Number", text)
        crl_pem = self.path("crl.pem")
        self.assertEqual(run_cli(["openssl", "crl", "-inform", "DER", "-in", crl_der, "-out", crl_pem]).returncode, 0)
        chain = os.path.join(self.tenant, "chain.pem")
        bad = run_cli(["openssl", "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_pem, revoked])
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("certificate revoked", bad.stdout + bad.stderr)
        good = run_cli(["openssl", "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_pem, kept])
        self.assertEqual(good.returncode, 0, good.stdout + good.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
