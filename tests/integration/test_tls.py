"""MQTT over mutual TLS with the real broker and real clients: the PKI is
created on first start; mosquitto_pub/mosquitto_sub with --cafile/--cert/
--key and paho with tls_set connect with certificates issued by
fleetmq-pki; a device cannot use another device's client id; clients
without a certificate, with a certificate from an unknown CA, or speaking
garbage are refused with a log line and a counter, and others keep being
served."""
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import unittest

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import Broker, FLEETMQ, PKI, SubProcess, TlsBase, id_on, pipelined_session, wait_for, mqtt5_connect, mqtt5_publish, read_packet, run_cli, sys_at_least

class Tls(TlsBase):
    def test_first_run_pki_files(self):
        for f in ("root.crt", "server.crt", "operator.crt", "tenants/default/ca.crt"):
            self.assertTrue(os.path.exists(os.path.join(self.pki, f)), f)
        self.assertEqual(os.stat(os.path.join(self.pki, "tenants/default/ca.key")).st_mode & 0o777, 0o600)

    def test_mosquitto_clients_over_mtls(self):
        crt, key = self.device("dev-1")
        sub = SubProcess(self.tls_args(crt, key) + ["-i", "dev-1", "-t", "devices/dev-1/#", "-C", "1", "-W", "10", "-v"])
        op = [os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key")]
        r = run_cli(["mosquitto_pub"] + self.tls_args(*op) + ["-t", "devices/dev-1/cmd", "-m", "reboot", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sub.lines(), ["devices/dev-1/cmd reboot"])

    def test_paho_tls_set_v5_and_client_id_binding(self):
        crt, key = self.device("dev-2")
        c = mqtt.Client(client_id="", protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=os.path.join(self.pki, "root.crt"), certfile=crt, keyfile=key)
        got = []
        c.on_connect = lambda cl, u, f, rc, p=None: got.append((rc, p))
        c.connect("localhost", self.broker.tls_port, 30)
        c.loop_start()
        deadline = time.time() + 5
        while not got and time.time() < deadline:
            time.sleep(0.05)
        c.loop_stop()
        c.disconnect()
        self.assertEqual(int(got[0][0].value if hasattr(got[0][0], "value") else got[0][0]), 0)
        self.assertEqual(got[0][1].AssignedClientIdentifier, "dev-2")  # its certificate's id
        # Another device's id is refused.
        r = run_cli(["mosquitto_pub"] + self.tls_args(crt, key) + ["-i", "dev-1", "-t", "x", "-m", "y"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("certificate's device id", self.broker.read_log())

    def test_refused_handshakes_do_not_disturb_others(self):
        crt, key = self.device("dev-3")
        sub = SubProcess(self.tls_args(crt, key) + ["-i", "dev-3", "-t", "devices/dev-3/alive", "-C", "1", "-W", "15"])
        # No client certificate.
        r = run_cli(["mosquitto_pub", "-h", "localhost", "-p", str(self.broker.tls_port), "--cafile",
                     os.path.join(self.pki, "root.crt"), "-t", "x", "-m", "y"])
        self.assertNotEqual(r.returncode, 0)
        # A certificate from another PKI.
        other = tempfile.mkdtemp(prefix="fleetmq-otherpki-")
        self.assertEqual(run_cli([PKI, "init", "--dir", other]).returncode, 0)
        r = run_cli(["mosquitto_pub"] + self.tls_args(os.path.join(other, "pki", "operator.crt"),
                                                      os.path.join(other, "pki", "operator.key")) + ["-t", "x", "-m", "y"])
        self.assertNotEqual(r.returncode, 0)
        shutil.rmtree(other, ignore_errors=True)
        # Garbage and plain MQTT on the TLS port.
        for junk in (b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a", b"\x16\x03\x01\xff\xff" + b"\0" * 64):
            s = socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5)
            s.sendall(junk)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
            s.close()
        op = [os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key")]
        r = run_cli(["mosquitto_pub"] + self.tls_args(*op) + ["-t", "devices/dev-3/alive", "-m", "yes", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sub.lines(timeout=20), ["yes"])
        log = self.broker.read_log()
        self.assertIn("TLS from", log)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/connections/tls_refused", 4), 4)


class TlsHandOver(TlsBase):
    def test_bytes_right_after_connect_survive_the_tls_hand_over(self):
        # As in test_workers, over mutual TLS: the TLS session moves to the
        # home worker with the plaintext that followed the CONNECT.
        op = (os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key"))
        for i in range(12):
            cid = id_on(i % 2, "tpipe%d" % i, tenant="default")
            with self.raw_tls(*op) as s:
                seen, payload = pipelined_session(s, cid, b"t%d" % i)
            self.assertEqual(payload, b"t%d" % i)
            # CONNACK first; then SUBACK, PUBACK and our message, the SUBACK
            # not necessarily before the message ([MQTT-3.8.4]: a server may
            # send matching PUBLISHes before the SUBACK).
            self.assertEqual(seen[0], 0x20, seen)
            self.assertEqual(sorted(seen[1:]), [0x30, 0x40, 0x90], seen)


class TwoTenants(TlsBase):
    # ACLs wide open inside each tenant: what is tested is the isolation.
    flags = ("--acl.device=readwrite #",)

    def test_cross_tenant_publish_subscribe_and_retained_all_fail(self):
        # A second tenant, then a restart so the broker trusts its CA.
        self.broker.stop()
        self.assertEqual(run_cli([PKI, "init", "--dir", self.broker.data_dir, "--tenant", "acme"]).returncode, 0)
        self.broker.log.close()
        self.broker.start()
        a_crt, a_key = self.device("dev-a", "default")
        b_crt, b_key = self.device("dev-b", "acme")
        b2_crt, b2_key = self.device("dev-b2", "acme")
        v5 = ["-V", "mqttv5"]
        spy = self.paho(b_crt, b_key, "dev-b")  # acme
        self.assertEqual(spy.subscribe("#", "x/y"), [1, 1])
        peer = self.paho(a_crt, a_key, "dev-a")  # default
        self.assertEqual(peer.subscribe("x/y"), [1])
        # The default tenant's operator publishes (a device certificate binds
        # its one client id, which dev-a's subscriber is using).
        op = self.tls_args(os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key")) + v5
        r = run_cli(["mosquitto_pub"] + op + ["-t", "x/y", "-m", "default-only", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_cli(["mosquitto_pub"] + op + ["-t", "cfg", "-m", "retained-default", "-r", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(peer.get().payload, b"default-only")  # same tenant: delivered
        # The control: a message inside acme, published after the other
        # tenant's, is the first (and only) one the spy gets, wildcards included.
        b2 = self.paho(b2_crt, b2_key, "dev-b2")
        b2.publish("x/y", b"acme-control")
        m = spy.get()
        self.assertEqual((m.topic, m.payload), ("x/y", b"acme-control"))
        self.assertTrue(spy.messages.empty())
        b2.close()
        # Retained: acme reads its own retained message, never the other tenant's.
        r = run_cli(["mosquitto_pub"] + self.tls_args(b2_crt, b2_key) + v5 + ["-i", "dev-b2", "-t", "acme-cfg", "-m", "mine",
                                                                              "-r", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_cli(["mosquitto_sub"] + self.tls_args(b2_crt, b2_key) + v5 + ["-i", "dev-b2", "-t", "cfg", "-t", "acme-cfg",
                                                                              "--retained-only", "-W", "3", "-v"])
        self.assertEqual(r.stdout.strip(), "acme-cfg mine")
        # Naming the other tenant's mount point is refused (SUBACK 0x87).
        r = run_cli(["mosquitto_sub"] + self.tls_args(b2_crt, b2_key) + v5 + ["-i", "dev-b2", "-t", "$T/default/#", "-W", "2"])
        self.assertEqual(r.stdout.strip(), "")
        self.assertIn("All subscription requests were denied", r.stderr + r.stdout)


class Revocation(TlsBase):
    def test_revoked_certificate_is_refused_after_restart_and_listed_in_the_crl(self):
        crt, key = self.device("dev-r")
        args = self.tls_args(crt, key) + ["-i", "dev-r", "-t", "devices/dev-r/up", "-m", "x", "-q", "1"]
        self.assertEqual(run_cli(["mosquitto_pub"] + args).returncode, 0)
        serial = run_cli(["openssl", "x509", "-in", crt, "-noout", "-serial"]).stdout.strip().split("=")[1].lower()
        r = run_cli([PKI, "revoke", "--dir", self.broker.data_dir, "--serial", serial])
        self.assertNotEqual(r.returncode, 0)  # the broker holds the store
        self.assertIn("stop it first", r.stderr)
        self.broker.stop()
        r = run_cli([PKI, "revoke", "--dir", self.broker.data_dir, "--serial", serial])
        self.assertEqual(r.returncode, 0, r.stderr)
        crl = subprocess.run([PKI, "crl", "--dir", self.broker.data_dir], capture_output=True)
        self.assertEqual(crl.returncode, 0, crl.stderr)
        text = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-text"], input=crl.stdout,
                              capture_output=True).stdout.decode()
        self.assertIn(serial.upper().lstrip("0"), text.replace(":", "").upper())
        self.broker.log.close()
        self.broker.start()
        self.assertIn("1 revoked certificate loaded", self.broker.read_log())
        r = run_cli(["mosquitto_pub"] + self.tls_args(crt, key) + ["-i", "dev-r", "-t", "devices/dev-r/up", "-m", "x", "-q", "1"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is revoked", self.broker.read_log())
        other_crt, other_key = self.device("dev-ok")
        r = run_cli(["mosquitto_pub"] + self.tls_args(other_crt, other_key) + ["-i", "dev-ok", "-t", "devices/dev-ok/up", "-m", "x", "-q", "1"])
        self.assertEqual(r.returncode, 0, r.stderr)


class HandshakeFlood(TlsBase):
    flags = ("--tls_max_handshakes=3",)

    def test_pending_handshakes_are_bounded_and_others_still_served(self):
        stalled = [socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5) for _ in range(3)]
        # Accepted by the broker (it counts them as connections) before the next one.
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/connections/accepted", 4), 4)
        extra = socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5)
        t0 = time.time()
        self.assertEqual(extra.recv(10), b"")  # closed at once, no handshake work
        self.assertLess(time.time() - t0, 2)
        extra.close()
        deadline = time.time() + 3
        while "TLS handshake limit" not in self.broker.read_log() and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn("TLS handshake limit", self.broker.read_log())
        # Plain clients are unaffected; once the stalled handshakes go away, TLS works again.
        r = run_cli(["mosquitto_pub", "-p", str(self.broker.port), "-t", "plain", "-m", "x"])
        self.assertEqual(r.returncode, 0)
        for s in stalled:
            s.close()
        crt, key = self.device("dev-f")
        # Once the broker has seen them close, TLS works again (bounded retries).
        ok = wait_for(lambda: run_cli(["mosquitto_pub"] + self.tls_args(crt, key) +
                                      ["-i", "dev-f", "-t", "devices/dev-f/up", "-m", "x"]).returncode == 0, step=0.1)
        self.assertTrue(ok, "TLS refused after the stalled handshakes closed")


class DeviceAcl(TlsBase):
    def test_default_device_policy(self):
        crt, key = self.device("dev-7")
        watcher = self.paho(os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key"), "watcher")
        self.assertEqual(watcher.subscribe("devices/#"), [1])
        # Another device's subtree: PUBACK 0x87, never delivered (a raw v5
        # client, to read the PUBACK's reason code).
        with self.raw_tls(crt, key) as raw:
            raw.sendall(mqtt5_connect("dev-7"))
            first, body = read_packet(raw)
            self.assertEqual((first, body[1]), (0x20, 0))  # CONNACK, success
            raw.sendall(mqtt5_publish("devices/dev-8/cmd", b"forged", qos=1, packet_id=9))
            first, body = read_packet(raw)
            self.assertEqual((first, body[:2], body[2]), (0x40, b"\x00\x09", 0x87))  # PUBACK: not authorized
        dev = self.paho(crt, key, "dev-7")
        # Its own subtree: allowed, and the watcher sees it (the control: had
        # the forged message been delivered, it would have come first).
        dev.publish("devices/dev-7/up", b"legit")
        m = watcher.get()
        self.assertEqual((m.topic, m.payload), ("devices/dev-7/up", b"legit"))
        self.assertTrue(watcher.messages.empty())
        self.assertEqual(sys_at_least(self.broker.port, "$SYS/broker/publish/messages/denied", 1), 1)
        # Subscriptions outside its rules are refused with 0x87; its own granted.
        self.assertEqual(dev.subscribe("devices/+/cmd", "devices/dev-7/cmd"), [0x87, 1])


class SysIsolation(TlsBase):
    # Two queued messages per session: the third is dropped and counted.
    flags = ("--limits.max_queued_messages=2",)

    def persistent(self, port, client_id, topic, tls=None):
        """A v5 session that outlives its connection, subscribed at QoS 1, then offline."""
        c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            c.tls_set(ca_certs=os.path.join(self.pki, "root.crt"), certfile=tls[0], keyfile=tls[1])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        c.connect("localhost" if tls else "127.0.0.1", port, 30, clean_start=False, properties=props)
        c.loop_start()
        granted = []
        c.on_subscribe = lambda cl, u, mid, codes, p=None: granted.extend(codes)
        c.subscribe(topic, qos=1)
        deadline = time.time() + 5
        while not granted and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual([g.value for g in granted], [1])
        c.disconnect()
        c.loop_stop()

    def read(self, args, topic):
        r = run_cli(["mosquitto_sub"] + args + ["-t", topic, "-v", "-W", "3"], timeout=10)
        return sorted(r.stdout.split("\n")[:-1])

    def test_per_client_statistics_stay_inside_the_tenant(self):
        crt, key = self.device("dev-s")
        op = self.tls_args(os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key"))
        # The same client id in the tenant and in the anonymous namespace.
        self.persistent(self.broker.tls_port, "dev-s", "devices/dev-s/#", tls=(crt, key))
        self.persistent(self.broker.port, "dev-s", "t/#")
        for i in range(5):  # tenant: 2 queued, 3 dropped
            r = run_cli(["mosquitto_pub"] + op + ["-t", "devices/dev-s/in", "-m", str(i), "-q", "1"])
            self.assertEqual(r.returncode, 0, r.stderr)
        for i in range(3):  # anonymous: 2 queued, 1 dropped
            r = run_cli(["mosquitto_pub", "-p", str(self.broker.port), "-t", "t/x", "-m", str(i), "-q", "1"])
            self.assertEqual(r.returncode, 0, r.stderr)
        plain = ["-p", str(self.broker.port)]
        deadline = time.time() + 8
        while time.time() < deadline:
            tenant_view = self.read(op, "$SYS/fleetmq/stats/v1/clients/+/dropped")
            anon_view = self.read(plain, "$SYS/broker/clients/+/dropped")
            if tenant_view and anon_view:
                break
        # Each namespace sees its own client's count, and only that.
        self.assertEqual(tenant_view, ["$SYS/fleetmq/stats/v1/clients/dev-s/dropped 3"])
        self.assertEqual(anon_view, ["$SYS/broker/clients/dev-s/dropped 1"])
        # The platform admin sees every tenant's, named by tenant.
        adm = self.tls_args(os.path.join(self.pki, "admin.crt"), os.path.join(self.pki, "admin.key"))
        self.assertEqual(self.read(adm, "$SYS/fleetmq/stats/v1/tenants/+/clients/+/dropped"),
                         ["$SYS/fleetmq/stats/v1/tenants/default/clients/dev-s/dropped 3"])
        # A device may not read its tenant's statistics.
        r = run_cli(["mosquitto_sub"] + self.tls_args(crt, key) + ["-i", "dev-s", "-t", "$SYS/fleetmq/stats/v1/#",
                                                                   "-W", "2", "-V", "mqttv5"])
        self.assertIn("subscription requests were denied", r.stderr + r.stdout)


class TicketsAcrossRestart(TlsBase):
    """Session tickets sealed with keys kept in the data dir: a device
    holding one resumes after kill -9 without a full handshake; revocation
    while the broker was down still refuses it; a damaged key file costs
    only a full handshake."""

    def client_ctx(self, crt, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(self.pki, "root.crt"))
        ctx.load_cert_chain(crt, key)
        return ctx

    def mqtt(self, ctx, client_id, session=None):
        """A TLS connection (resuming `session` if given) that sent CONNECT
        and read CONNACK; (whether it resumed, its session, CONNACK code)."""
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5),
                            server_hostname="localhost", session=session)
        try:
            s.sendall(mqtt5_connect(client_id))
            first, body = read_packet(s)
            self.assertEqual(first, 0x20)
            return s.session_reused, s.session, body[1]
        finally:
            s.close()

    def s_client(self, crt, key, *sess):
        r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % self.broker.tls_port,
                            "-servername", "localhost", "-CAfile", os.path.join(self.pki, "root.crt"),
                            "-cert", crt, "-key", key] + list(sess), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=10)
        return r.stdout.decode(errors="replace")

    def test_resumption_survives_kill9_revocation_and_damaged_keys_are_handled(self):
        crt, key = self.device("dev-t")
        ctx = self.client_ctx(crt, key)
        resumed, session, code = self.mqtt(ctx, "dev-t")
        self.assertFalse(resumed)
        self.assertEqual(code, 0)
        self.assertTrue(session.has_ticket)
        sess_file = os.path.join(self.tmp, "s_client.sess")
        self.assertIn("New, TLSv1.2", self.s_client(crt, key, "-sess_out", sess_file))
        keys = os.path.join(self.pki, "ticket-keys")
        self.assertEqual(stat.S_IMODE(os.stat(keys).st_mode), 0o600)

        self.broker.kill9_and_restart()
        resumed, session2, code = self.mqtt(ctx, "dev-t", session)
        self.assertTrue(resumed, "a ticket from before kill -9 resumes")
        self.assertEqual(code, 0)
        self.assertIn("Reused, TLSv1.2", self.s_client(crt, key, "-sess_in", sess_file))
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/tls/tickets/opened", 2), 2)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/tls/resumed", 2), 2)

        # Revoked while the broker is down: the ticket still opens, the
        # session is refused.
        serial = run_cli(["openssl", "x509", "-in", crt, "-noout", "-serial"]).stdout.strip().split("=")[1].lower()
        self.broker.stop()
        r = run_cli([PKI, "revoke", "--dir", self.broker.data_dir, "--serial", serial])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.broker.log.close()
        self.broker.start()
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            self.mqtt(ctx, "dev-t", session2)
        self.assertTrue(wait_for(lambda: "is revoked" in self.broker.read_log()))

        # A damaged key file: set aside, new keys, and a device with an old
        # ticket just pays a full handshake.
        crt2, key2 = self.device("dev-u")
        ctx2 = self.client_ctx(crt2, key2)
        _, session, _ = self.mqtt(ctx2, "dev-u")
        self.broker.stop()
        with open(keys, "w") as f:
            f.write("fleetmq ticket keys v1\ngarbage\n")
        self.broker.log.close()
        self.broker.start()
        self.assertIn("unreadable", self.broker.read_log())
        self.assertTrue(os.path.exists(keys + ".damaged"))
        resumed, session, code = self.mqtt(ctx2, "dev-u", session)
        self.assertFalse(resumed)
        self.assertEqual(code, 0)
        resumed, _, code = self.mqtt(ctx2, "dev-u", session)  # the new ticket resumes
        self.assertTrue(resumed)
        self.assertEqual(code, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
