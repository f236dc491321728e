"""The admin control plane through the real broker and the real CLI
(fleetmq-admin) over mutual TLS: each command's happy path and errors,
cross-tenant denial, live revocation cutting a connected device within 1 s,
suspension keeping a device out, connectivity events and the offline bound,
tenant quotas, the MQTT 3.1.1 reply topic, bad requests from real clients,
and the CRL checked with the openssl CLI."""
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

import paho.mqtt.client as mqtt

from harness import FLEETMQ, PKI, TlsBase, id_on, mqtt5_connect, mqtt5_publish, read_packet, run_cli, sys_at_least, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ADMIN = os.environ.get("FLEETMQ_ADMIN_BIN", os.path.join(os.path.dirname(FLEETMQ), "..", "tools", "fleetmq-admin"))


class AdminBase(TlsBase):
    def admin(self, *args, cert=None, ok=True):
        cmd = [ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port), "--json"]
        if cert:
            cmd += ["--cert", cert[0], "--key", cert[1]]
        r = run_cli(cmd + list(args), timeout=20)
        if ok:
            self.assertEqual(r.returncode, 0, "%s: %s %s" % (args, r.stdout, r.stderr))
            return json.loads(r.stdout)["data"]
        return r

    def error_code(self, r):
        self.assertNotEqual(r.returncode, 0)
        return r.stderr.split(":")[0].replace("error ", "").strip()

    def csr(self, name):
        key, csr = os.path.join(self.tmp, name + ".key"), os.path.join(self.tmp, name + ".csr")
        r = run_cli(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", key, "-subj", "/CN=" + name, "-out", csr])
        self.assertEqual(r.returncode, 0, r.stderr)
        return key, csr

    def register(self, name, cert=None, model="m1", groups="g1"):
        key, csr = self.csr(name)
        d = self.admin("device.register", "serial_number=SN-" + name, "model_id=" + model, "group_ids=" + groups,
                       "device_id=" + name, "csr=@" + csr, cert=cert)
        crt = os.path.join(self.tmp, name + ".crt")
        with open(crt, "w") as f:
            f.write(d["certificate_pem"])
        return crt, key, d

    def setup_fleet(self, cert=None):
        self.admin("model.create", "model_id=m1", "manufacturer=ACME", cert=cert)
        self.admin("group.create", "group_id=g1", "firmware_target_version=1.2.0", cert=cert)

    def connect(self, crt, key, client_id, v5=True, keepalive=15):
        c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        c.tls_set(ca_certs=os.path.join(self.pki, "root.crt"), certfile=crt, keyfile=key)
        state = {"rc": None, "disconnected": None, "msgs": []}

        def on_connect(cl, u, f, rc, p=None):
            state["rc"] = rc.value if hasattr(rc, "value") else rc  # v5: a ReasonCodes

        def on_disconnect(cl, u, rc, p=None):
            state["disconnected"] = (time.time(), rc)

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_message = lambda cl, u, m: state["msgs"].append((m.topic, m.payload, m.properties))
        try:
            c.connect("localhost", self.broker.tls_port, keepalive)
        except Exception as e:  # TLS refused
            state["rc"] = "tls: %s" % e
            return c, state
        c.loop_start()
        deadline = time.time() + 5
        while state["rc"] is None and time.time() < deadline:
            time.sleep(0.02)
        if state["rc"] is None:
            state["rc"] = "no CONNACK"  # never equal to a reason code: a hang is no refusal
        return c, state

    def closed_by_broker(self, s, within=3.0):
        """True when the broker closes `s` (EOF or reset) within the bound."""
        s.settimeout(within)
        try:
            return s.recv(16) == b""
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def refused(self, crt, key):
        """True when the broker refuses the certificate: the handshake fails,
        or the broker closes the connection right after it (TLS 1.2 ends
        with the server's Finished before the client certificate is judged)."""
        try:
            s = self.raw_tls(crt, key)
        except (ssl.SSLError, ConnectionError):
            return True
        s.sendall(CONNECT_ANY)  # answered at once (CONNACK) when the certificate is fine
        refused = self.closed_by_broker(s)
        s.close()
        return refused

    def op_cert(self):
        return os.path.join(self.pki, "operator.crt"), os.path.join(self.pki, "operator.key")


class Commands(AdminBase):
    def test_help_comes_from_the_command_table(self):
        r = run_cli([ADMIN, "help"])
        self.assertEqual(r.returncode, 0)
        for name in ("tenant.create", "device.register", "device.replace", "audit.export", "cert.revoke"):
            self.assertIn(name, r.stdout)
        r = run_cli([ADMIN, "help", "device.register"])
        self.assertIn("serial_number=<string> (required)", r.stdout)

    def test_tenant_model_group_commands(self):
        tenants = self.admin("tenant.list")["tenants"]
        self.assertEqual([t["tenant_id"] for t in tenants], ["default"])
        d = self.admin("tenant.create", "tenant_id=acme", "name=ACME Corp", "max_connections=5")
        self.assertIn("BEGIN CERTIFICATE", d["ca_pem"])
        self.assertEqual(self.error_code(self.admin("tenant.create", "tenant_id=acme", ok=False)), "already_exists")
        self.assertEqual(self.error_code(self.admin("tenant.create", "tenant_id=Not_Valid", ok=False)), "invalid_argument")
        self.assertEqual(sorted(t["tenant_id"] for t in self.admin("tenant.list")["tenants"]), ["acme", "default"])
        # An operator may not create tenants.
        r = self.admin("tenant.create", "tenant_id=x", cert=self.op_cert(), ok=False)
        self.assertEqual(self.error_code(r), "forbidden")
        self.setup_fleet()
        self.assertEqual(self.error_code(self.admin("model.create", "model_id=m1", ok=False)), "already_exists")
        self.assertEqual(self.admin("model.list")["models"][0]["manufacturer"], "ACME")
        g = self.admin("group.update", "group_id=g1", "firmware_target_version=1.3.0", 'config_template={"rate":5}')
        self.assertEqual(g["config_template"], {"rate": 5})
        self.assertEqual(self.admin("group.get", "group_id=g1")["firmware_target_version"], "1.3.0")
        self.assertEqual(len(self.admin("group.list")["groups"]), 1)
        self.assertEqual(self.error_code(self.admin("group.get", "group_id=nope", ok=False)), "not_found")
        self.assertEqual(self.error_code(self.admin("group.update", "group_id=g1", ok=False)), "invalid_argument")
        # The CLI refuses what it can check itself, before sending.
        r = self.admin("group.create", "colour=red", ok=False)
        self.assertEqual(r.returncode, 2)

    def test_device_lifecycle_and_certificates(self):
        self.setup_fleet()
        crt, key, d = self.register("dev-1")
        self.assertEqual(d["status"], "provisioned")
        self.assertTrue(d["mqtt_endpoint"].startswith("mqtts://127.0.0.1:"))
        # openssl verifies the issued certificate against the returned chain.
        chain = os.path.join(self.tmp, "chain.pem")
        with open(chain, "w") as f:
            f.write(d["ca_chain_pem"])
        r = run_cli(["openssl", "verify", "-CAfile", chain, crt])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # First connection activates; get/list show it live.
        c, st = self.connect(crt, key, "dev-1")
        self.assertEqual(st["rc"], 0)
        dev = self.admin("device.get", "device_id=dev-1")
        self.assertEqual((dev["status"], dev["online"]), ("active", True))
        self.assertGreater(dev["first_seen_at_ms"], 0)
        self.assertEqual([x["device_id"] for x in self.admin("device.list", "online=true")["devices"]], ["dev-1"])
        self.assertEqual(self.admin("device.list", "online=false")["devices"], [])
        self.assertEqual(len(self.admin("device.list", "group_id=g1", "status=active", "model_id=m1")["devices"]), 1)
        # Suspend: disconnected at once and kept out; resume lets it back.
        self.admin("device.suspend", "device_id=dev-1")
        deadline = time.time() + 2
        while st["disconnected"] is None and time.time() < deadline:
            time.sleep(0.02)
        self.assertIsNotNone(st["disconnected"], "suspended device still connected")
        c.loop_stop()
        c2, st2 = self.connect(crt, key, "dev-1")
        self.assertEqual(st2["rc"], 0x8A, st2)  # banned
        c2.loop_stop()
        self.assertEqual(self.error_code(self.admin("device.suspend", "device_id=dev-1", ok=False)), "invalid_transition")
        self.admin("device.resume", "device_id=dev-1")
        c3, st3 = self.connect(crt, key, "dev-1")
        self.assertEqual(st3["rc"], 0)
        c3.disconnect()
        c3.loop_stop()
        # Register first, provision later (and again: the old certificate is revoked).
        self.assertEqual(self.admin("device.register", "serial_number=SN-p", "model_id=m1", "device_id=dev-p")["status"],
                         "registered")
        self.assertEqual(self.error_code(self.admin("device.activate", "device_id=dev-p", ok=False)), "invalid_transition")
        pkey, pcsr = self.csr("dev-p")
        p1 = self.admin("device.provision", "device_id=dev-p", "csr=@" + pcsr)
        self.assertEqual(p1["status"], "provisioned")
        p2 = self.admin("device.provision", "device_id=dev-p", "csr=@" + pcsr)
        certs = {c["serial"]: c["revoked_at_ms"] for c in self.admin("cert.list", "device_id=dev-p")["certificates"]}
        self.assertGreater(certs[p1["certificate_serial"]], 0)
        self.assertEqual(certs[p2["certificate_serial"]], 0)
        self.assertEqual(self.admin("device.activate", "device_id=dev-p")["status"], "active")
        # Replace by a newcomer, then decommission: certificates revoked.
        self.admin("device.register", "serial_number=SN-new", "model_id=m1", "device_id=dev-new")
        rep = self.admin("device.replace", "device_id=dev-1", "new_device_id=dev-new")
        self.assertEqual(rep["old"]["status"], "replaced")
        self.assertEqual(rep["new"]["group_ids"], ["g1"])
        self.assertEqual([x["device_id"] for x in self.admin("device.list", "group_id=g1")["devices"]], ["dev-new"])
        self.assertIn("device.replace", [e["action"] for e in self.admin("audit.query", "device_id=dev-new")["entries"]])
        self.assertTrue(self.refused(crt, key))  # its certificate is revoked: the handshake is refused
        certs = self.admin("cert.list", "device_id=dev-1")["certificates"]
        self.assertTrue(all(x["revoked_at_ms"] > 0 for x in certs))
        self.admin("device.decommission", "device_id=dev-new")
        self.assertEqual(self.error_code(self.admin("device.decommission", "device_id=dev-new", ok=False)),
                         "invalid_transition")
        # Audit: everything above is in the chain, which verifies.
        actions = [e["action"] for e in self.admin("audit.query", "device_id=dev-1")["entries"]]
        for a in ("device.register", "device.connected", "device.suspend", "device.resume", "device.replace"):
            self.assertIn(a, actions)
        self.assertGreater(self.admin("audit.verify")["entries"], 5)
        r = run_cli([ADMIN, "--data_dir", self.broker.data_dir, "--port", str(self.broker.tls_port), "audit.export"])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual([e["seq"] for e in lines], sorted(e["seq"] for e in lines))
        self.assertGreater(len(lines), 8)

    def test_errors_are_clear_and_exit_non_zero(self):
        self.setup_fleet()
        self.assertEqual(self.error_code(self.admin("device.get", "device_id=ghost", ok=False)), "not_found")
        self.assertEqual(self.error_code(self.admin("device.activate", "device_id=ghost", ok=False)), "not_found")
        self.assertEqual(self.error_code(self.admin("device.register", "serial_number=x", "model_id=nope", ok=False)),
                         "not_found")
        key, csr = self.csr("impostor")
        r = self.admin("device.register", "serial_number=y", "model_id=m1", "device_id=dev-9", "csr=@" + csr, ok=False)
        self.assertEqual(self.error_code(r), "invalid_argument")
        self.assertIn("csr", r.stderr)
        self.assertEqual(self.admin("device.list")["devices"], [])  # nothing half-written
        for raw, code in (("{nope", "bad_request"), ("[]", "bad_request"), ('{"commands":[{"command":"x.y"}]}', "unknown_command"),
                          ('{"commands":[{"command":"device.get"}]}', "missing_argument"),
                          ('{"commands":[{"command":"device.get","device_id":[1]}]}', "invalid_argument"),
                          ('{"commands":[{"command":"device.list","tenant":"other"}]}', "invalid_argument")):
            r = self.admin("--raw", raw, ok=False)
            self.assertEqual(self.error_code(r), code, raw)
        big = os.path.join(self.broker.data_dir, "big.json")  # > management.max_request_bytes, > one argument
        with open(big, "w") as f:
            json.dump({"commands": [{"command": "model.list"}], "pad": "x" * 270000}, f)
        self.assertEqual(self.error_code(self.admin("--raw", "@" + big, ok=False)), "too_large")
        # The broker is still serving.
        self.assertEqual(self.admin("model.list")["models"][0]["model_id"], "m1")

    def test_v311_client_gets_replies_on_its_reply_topic(self):
        op = self.op_cert()
        base = ["-h", "localhost", "-p", str(self.broker.tls_port), "--cafile", os.path.join(self.pki, "root.crt"),
                "--cert", op[0], "--key", op[1], "-V", "mqttv311"]
        # mosquitto_pub (3.1.1) gets its request accepted.
        r = run_cli(["mosquitto_pub"] + base + ["-i", "ops311-pub", "-t", "$SYS/fleetmq/control/v1", "-q", "1",
                                                "-m", '{"commands":[{"command":"model.list"}]}'])
        self.assertEqual(r.returncode, 0, r.stderr)
        # Another client may not read someone else's replies.
        snoop, sst = self.connect(op[0], op[1], "snoop")
        granted = []
        snoop.on_subscribe = lambda cl, u, mid, codes, p=None: granted.extend(codes)
        snoop.subscribe("$SYS/fleetmq/control/v1/reply/ops311c", qos=1)
        deadline = time.time() + 3
        while not granted and time.time() < deadline:
            time.sleep(0.02)
        self.assertTrue(granted and granted[0].value == 0x87, granted)
        snoop.disconnect()
        snoop.loop_stop()
        # paho 3.1.1 as the same client id: publish, and read the reply.
        c = mqtt.Client(client_id="ops311c", protocol=mqtt.MQTTv311)
        c.tls_set(ca_certs=os.path.join(self.pki, "root.crt"), certfile=op[0], keyfile=op[1])
        got = []
        subacked = []
        c.on_message = lambda cl, u, m: got.append(m.payload)
        c.on_subscribe = lambda cl, u, mid, codes: subacked.append(codes)
        c.connect("localhost", self.broker.tls_port, 30)
        c.subscribe("$SYS/fleetmq/control/v1/reply/ops311c", qos=1)
        c.loop_start()
        self.assertEqual(wait_for(lambda: subacked), [(1,)])
        c.publish("$SYS/fleetmq/control/v1", '{"commands":[{"command":"group.list","id":7}]}', qos=1)
        deadline = time.time() + 5
        while not got and time.time() < deadline:
            time.sleep(0.02)
        c.disconnect()
        c.loop_stop()
        self.assertTrue(got)
        reply = json.loads(got[0])
        self.assertEqual(reply["responses"][0]["status"], "ok")
        self.assertEqual(reply["responses"][0]["id"], 7)


class LiveCuts(AdminBase):
    def test_suspend_decommission_replace_cut_with_0x98_and_spare_the_others(self):
        self.setup_fleet()
        devs = {name: self.register(name) for name in ("d-sus", "d-dec", "d-rep", "d-by")}
        self.admin("device.register", "serial_number=SN-d-new", "model_id=m1", "device_id=d-new")
        conns = {}
        for name, (crt, key, _) in devs.items():
            c, st = self.connect(crt, key, name)
            self.assertEqual(st["rc"], 0, name)
            conns[name] = (c, st)
        bystander, bst = conns["d-by"]
        for cmd in (("device.suspend", "device_id=d-sus"), ("device.decommission", "device_id=d-dec"),
                    ("device.replace", "device_id=d-rep", "new_device_id=d-new")):
            self.admin(*cmd)
        for name in ("d-sus", "d-dec", "d-rep"):
            c, st = conns[name]
            self.assertTrue(wait_for(lambda: st["disconnected"] is not None), name + " still connected")
            self.assertEqual(st["disconnected"][1].value, 0x98, name)  # administrative action
            c.loop_stop()  # no reconnect
        # The bystander was never disconnected and is still served.
        self.assertIsNone(bst["disconnected"])
        subacked = []
        bystander.on_subscribe = lambda cl, u, mid, codes, p=None: subacked.append(codes)
        bystander.subscribe("devices/d-by/echo", qos=1)
        self.assertTrue(wait_for(lambda: subacked))
        bystander.publish("devices/d-by/echo", b"still here", qos=1)
        self.assertTrue(wait_for(lambda: any(m[1] == b"still here" for m in bst["msgs"])))
        bystander.disconnect()
        bystander.loop_stop()


class Concurrency(AdminBase):
    def test_handshakes_on_both_workers_while_cas_are_added_and_crls_reloaded(self):
        """What the TSan stage looks at: handshakes on every worker reading
        the trust chain and the revocation sets while the management thread
        adds tenant CAs and revokes, and the CRL directory is reloaded."""
        self.setup_fleet()
        crt, key, _ = self.register("dev-busy")
        victim_crt, victim_key, victim = self.register("dev-victim")
        results = []
        stop = threading.Event()

        def handshakes():
            while not stop.is_set() and len(results) < 200:
                try:
                    s = self.raw_tls(crt, key)
                    s.sendall(CONNECT_ANY)
                    s.settimeout(5)
                    results.append(s.recv(4)[:1] == b"\x20")
                    s.close()
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    results.append(repr(e))

        threads = [threading.Thread(target=handshakes) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(3):
            self.admin("tenant.create", "tenant_id=busy-%d" % i)
            self.broker.proc.send_signal(signal.SIGHUP)
        self.admin("cert.revoke", "serial=" + victim["certificate_serial"])
        stop.set()
        for t in threads:
            t.join(30)
        self.assertGreater(len(results), 10)
        self.assertEqual([r for r in results if r is not True], [])
        self.assertTrue(self.refused(victim_crt, victim_key))


class ControlTopic(AdminBase):
    flags = ("--management.max_queued_requests=1",)

    def test_anonymous_clients_cannot_use_the_control_topic(self):
        s = socket.create_connection(("127.0.0.1", self.broker.port), timeout=5)
        s.sendall(mqtt5_connect("anon-ctl"))
        self.assertEqual(read_packet(s)[0], 0x20)
        s.sendall(mqtt5_publish("$SYS/fleetmq/control/v1", b'{"commands":[{"command":"tenant.list"}]}', 1, 5))
        first, body = read_packet(s)
        self.assertEqual((first, body[:2], body[2]), (0x40, b"\x00\x05", 0x87))
        s.close()

    def test_v5_response_topic_and_correlation_data(self):
        op = self.paho_op("ops-v5")
        self.assertEqual(op.subscribe("replies/ops"), [1])
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/ops"
        props.CorrelationData = b"\x00corr-17"
        op.c.publish("$SYS/fleetmq/control/v1", '{"commands":[{"command":"group.list"}]}', qos=1, properties=props)
        m = op.get()
        self.assertEqual(m.topic, "replies/ops")
        self.assertEqual(m.properties.CorrelationData, b"\x00corr-17")
        self.assertEqual(m.properties.ContentType, "application/json")
        self.assertEqual(json.loads(m.payload)["responses"][0]["status"], "ok")
        # A response topic under '$' other than its own reply topic is refused.
        s = self.raw_tls(*self.op_cert())
        s.sendall(mqtt5_connect("ops-raw"))
        self.assertEqual(read_packet(s)[0], 0x20)
        prop = b"\x08" + len(b"$SYS/x").to_bytes(2, "big") + b"$SYS/x"  # Response Topic
        topic = b"$SYS/fleetmq/control/v1"
        payload = b'{"commands":[{"command":"group.list"}]}'
        body = len(topic).to_bytes(2, "big") + topic + b"\x00\x07" + bytes([len(prop)]) + prop + payload
        s.sendall(b"\x32" + bytes([len(body)]) + body)
        first, pb = read_packet(s)
        self.assertEqual((first, pb[:2], pb[2]), (0x40, b"\x00\x07", 0x90))  # topic name invalid
        s.close()

    def test_full_management_queue_answers_0x97(self):
        # 40 requests in one write, against a queue of one: some wait, the
        # others are refused with 0x97 at once; each request gets its PUBACK.
        s = self.raw_tls(*self.op_cert())
        s.sendall(mqtt5_connect("ops-flood"))
        self.assertEqual(read_packet(s)[0], 0x20)
        req = b'{"commands":[{"command":"audit.verify"}]}'
        s.sendall(b"".join(mqtt5_publish("$SYS/fleetmq/control/v1", req, 1, i) for i in range(1, 41)))
        codes = {}
        while len(codes) < 40:
            first, body = read_packet(s)
            if first == 0x40:
                codes[int.from_bytes(body[:2], "big")] = body[2] if len(body) > 2 else 0
        self.assertEqual(sorted(codes), list(range(1, 41)))
        self.assertIn(0x97, codes.values())  # quota exceeded: the queue was full
        self.assertIn(0, codes.values())     # and the queue did take work
        self.assertEqual(set(codes.values()), {0, 0x97})
        s.close()
        # The broker still serves admin requests afterwards.
        self.assertEqual(self.admin("audit.verify")["valid"], True)

    def paho_op(self, client_id):
        from harness import PahoTls
        c = PahoTls(self.broker.tls_port, os.path.join(self.pki, "root.crt"), *self.op_cert(), client_id)
        self.addCleanup(c.close)
        self.assertEqual(c.rc, 0)
        return c


class Tenants(AdminBase):
    def test_cross_tenant_denial_for_every_command(self):
        self.setup_fleet()
        crt, key, d = self.register("dev-1")
        serial = d["certificate_serial"]
        self.admin("tenant.create", "tenant_id=rival")
        # An operator certificate of the new tenant, from its CA.
        sys_pki = self.pki
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir,
                     "--tenant", "rival", "--operator", "eve", "--out", self.tmp])
        self.assertEqual(r.returncode, 0, "fleetmq-pki issue --operator: " + r.stderr)
        eve = (os.path.join(self.tmp, "eve.crt"), os.path.join(self.tmp, "eve.key"))
        for args in (("device.get", "device_id=dev-1"), ("device.suspend", "device_id=dev-1"),
                     ("device.decommission", "device_id=dev-1"), ("device.activate", "device_id=dev-1"),
                     ("device.provision", "device_id=dev-1", "csr=x"), ("cert.list", "device_id=dev-1"),
                     ("cert.revoke", "serial=" + serial), ("group.get", "group_id=g1"),
                     ("device.replace", "device_id=dev-1", "new_device_id=dev-1b"),
                     ("group.update", "group_id=g1", "name=pwned")):
            r = self.admin(*args, cert=eve, ok=False)
            self.assertIn(self.error_code(r), ("not_found",), args)
        self.assertEqual(self.admin("device.list", cert=eve)["devices"], [])
        self.assertEqual(self.admin("model.list", cert=eve)["models"], [])
        self.assertEqual(self.error_code(self.admin("tenant.list", cert=eve, ok=False)), "forbidden")
        # The victim is untouched, and still connects.
        self.assertEqual(self.admin("device.get", "device_id=dev-1")["status"], "provisioned")
        self.assertEqual(self.admin("group.get", "group_id=g1")["name"], "g1")
        c, st = self.connect(crt, key, "dev-1")
        self.assertEqual(st["rc"], 0)
        c.disconnect()
        c.loop_stop()
        del sys_pki

    def test_device_cannot_use_the_control_topic(self):
        self.setup_fleet()
        crt, key, _ = self.register("dev-1")
        c, st = self.connect(crt, key, "dev-1")
        self.assertEqual(st["rc"], 0)
        info = c.publish("$SYS/fleetmq/control/v1", json.dumps({"commands": [{"command": "device.list"}]}), qos=1)
        info.wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
        denied = wait_for(lambda: [e for e in self.admin("audit.query", "limit=1000")["entries"]
                                   if e["actor"] == "device:dev-1" and e["result"].startswith("denied")], step=0.1)
        self.assertTrue(denied, "no denied entry for the device's control-topic request")
        # Devices cannot read management topics; they read their groups' topics
        # (from the registry at CONNECT) and no other group's.
        c, st = self.connect(crt, key, "dev-1")
        granted = []
        c.on_subscribe = lambda cl, u, mid, codes, p=None: granted.append(codes[0].value)
        for topic in ("$SYS/fleetmq/events/v1/connectivity/#", "groups/g1/#", "groups/g2/#"):
            n = len(granted)
            c.subscribe(topic, qos=0)
            deadline = time.time() + 3
            while len(granted) == n and time.time() < deadline:
                time.sleep(0.02)
        self.assertEqual(granted, [0x87, 0, 0x87])
        c.disconnect()
        c.loop_stop()
        # An operator may not take a device's client id (and so its session).
        o, so = self.connect(*self.op_cert(), "dev-1")
        self.assertEqual(so["rc"], 0x85)
        o.loop_stop()

    def test_group_membership_change_reaches_the_live_session(self):
        self.setup_fleet()
        self.admin("group.create", "group_id=g2")
        crt, key, _ = self.register("dev-1")  # in g1
        c, st = self.connect(crt, key, "dev-1")
        self.assertEqual(st["rc"], 0)
        granted = []
        c.on_subscribe = lambda cl, u, mid, codes, p=None: granted.extend(x.value for x in codes)
        c.subscribe([("groups/g1/#", 1), ("devices/dev-1/#", 1)])
        deadline = time.time() + 3
        while len(granted) < 2 and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(granted, [1, 1])
        op = ["-h", "localhost", "-p", str(self.broker.tls_port), "--cafile", os.path.join(self.pki, "root.crt"),
              "--cert", self.op_cert()[0], "--key", self.op_cert()[1], "-q", "1"]

        def publish_then_sentinel(tag):
            """Publishes to the group, then to the device's own topic; returns
            the group messages the device got once the sentinel arrived."""
            for topic, payload in (("groups/g1/cfg", tag), ("devices/dev-1/sentinel", tag)):
                r = run_cli(["mosquitto_pub"] + op + ["-t", topic, "-m", payload])
                self.assertEqual(r.returncode, 0, r.stderr)
            deadline = time.time() + 5
            while time.time() < deadline and not any(m[0] == "devices/dev-1/sentinel" and m[1] == tag.encode()
                                                     for m in st["msgs"]):
                time.sleep(0.02)
            return [m[1] for m in st["msgs"] if m[0] == "groups/g1/cfg"]

        self.assertEqual(publish_then_sentinel("one"), [b"one"])  # a member reads the group
        d = self.admin("device.set_groups", "device_id=dev-1", "group_ids=g2")
        self.assertEqual(d["group_ids"], ["g2"])
        self.assertEqual(publish_then_sentinel("two"), [b"one"])  # removed: nothing more, still connected
        self.assertIsNone(st["disconnected"])
        self.assertIn("subscription '$T/default/groups/g1/#' removed", self.broker.read_log())
        # Its new group is readable at once, without reconnecting; the old one is refused.
        granted.clear()
        c.subscribe([("groups/g2/#", 1), ("groups/g1/#", 1)])
        deadline = time.time() + 3
        while len(granted) < 2 and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(granted, [1, 0x87])
        self.assertEqual([x["device_id"] for x in self.admin("device.list", "group_id=g1")["devices"]], [])
        self.assertIn("device.set_groups", [e["action"] for e in self.admin("audit.query", "device_id=dev-1")["entries"]])
        self.assertEqual(self.error_code(self.admin("device.set_groups", "device_id=dev-1", "group_ids=nope", ok=False)),
                         "not_found")
        c.disconnect()
        c.loop_stop()

    def test_publish_rate_quota_across_two_workers(self):
        # 10/s for the tenant: each of the two workers admits its half (a
        # token bucket of 5 with one second of burst), so a burst of 20 from
        # a client on each worker gets about 5 through on each, never more
        # than the tenant's rate in total (plus what refills meanwhile).
        self.admin("tenant.create", "tenant_id=rated", "max_publish_rate=10")
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir, "--tenant", "rated", "--operator", "ops",
                     "--out", self.tmp])
        self.assertEqual(r.returncode, 0, r.stderr)
        ops = (os.path.join(self.tmp, "ops.crt"), os.path.join(self.tmp, "ops.key"))
        accepted = []
        for w in (0, 1):
            s = self.raw_tls(*ops)
            s.sendall(mqtt5_connect(id_on(w, "rate", tenant="rated")))
            self.assertEqual(read_packet(s)[:2][0], 0x20)
            s.sendall(b"".join(mqtt5_publish("load/x", b"x", 1, i) for i in range(1, 21)))
            codes = []
            while len(codes) < 20:
                first, body = read_packet(s)
                if first == 0x40:
                    codes.append(body[2] if len(body) > 2 else 0)
            s.close()
            self.assertEqual(set(codes) - {0, 0x97}, set(), codes)
            accepted.append(codes.count(0))
        for w, n in enumerate(accepted):
            self.assertGreaterEqual(n, 4, "worker %d: %s" % (w, accepted))
            self.assertLessEqual(n, 8, "worker %d: %s" % (w, accepted))
        self.assertLessEqual(sum(accepted), 14)
        self.assertGreaterEqual(sys_at_least(self.broker.port, "$SYS/broker/publish/messages/quota_refused", 24), 24)

    def test_tenant_connection_quota(self):
        self.admin("tenant.create", "tenant_id=small", "max_connections=1")
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir,
                     "--tenant", "small", "--operator", "ops", "--out", self.tmp])
        self.assertEqual(r.returncode, 0, "fleetmq-pki issue --operator: " + r.stderr)
        ops = (os.path.join(self.tmp, "ops.crt"), os.path.join(self.tmp, "ops.key"))
        a, sa = self.connect(*ops, "ops-a")
        self.assertEqual(sa["rc"], 0)
        b, sb = self.connect(*ops, "ops-b")
        self.assertEqual(sb["rc"], 0x97)  # quota exceeded
        b.loop_stop()
        # Another tenant is not affected.
        c, sc = self.connect(*self.op_cert(), "op-default")
        self.assertEqual(sc["rc"], 0)
        for x in (a, c):
            x.disconnect()
            x.loop_stop()
        self.assertIn("quota tenant max_connections reached", self.broker.read_log())
        self.assertEqual(sys_at_least(self.broker.port, "$SYS/broker/connections/quota_refused", 1), 1)


class Revocation(AdminBase):
    def test_live_revoke_cuts_within_a_second_and_crl_verifies(self):
        self.setup_fleet()
        crt, key, d = self.register("dev-1")
        watcher, ws = self.connect(*self.op_cert(), "watcher")
        watcher.subscribe("$SYS/fleetmq/crl/v1", qos=1)
        c, st = self.connect(crt, key, "dev-1")
        self.assertEqual(st["rc"], 0)
        t0 = time.time()
        self.admin("cert.revoke", "serial=" + d["certificate_serial"])
        deadline = time.time() + 3
        while st["disconnected"] is None and time.time() < deadline:
            time.sleep(0.01)
        self.assertIsNotNone(st["disconnected"])
        self.assertLess(st["disconnected"][0] - t0, 1.0)
        c.loop_stop()
        self.assertTrue(self.refused(crt, key))  # the reconnect fails
        self.assertIn("certificate %s of tenant 'default' is revoked" % d["certificate_serial"], self.broker.read_log())
        # The CRL on disk and on $SYS: openssl verifies it and rejects the cert.
        crl = os.path.join(self.pki, "tenants", "default", "crl.der")
        ca = os.path.join(self.pki, "tenants", "default", "ca.crt")
        r = run_cli(["openssl", "crl", "-inform", "DER", "-in", crl, "-CAfile", ca, "-noout"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("verify OK", r.stdout + r.stderr)
        crl_pem = os.path.join(self.tmp, "crl.pem")
        run_cli(["openssl", "crl", "-inform", "DER", "-in", crl, "-out", crl_pem])
        chain = os.path.join(self.tmp, "chain.pem")
        with open(chain, "w") as f:
            f.write(d["ca_chain_pem"])
        r = run_cli(["openssl", "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_pem, crt])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("revoked", r.stdout + r.stderr)
        deadline = time.time() + 3
        while not ws["msgs"] and time.time() < deadline:
            time.sleep(0.02)
        self.assertTrue(ws["msgs"], "no CRL on $SYS/fleetmq/crl/v1")
        with open(crl, "rb") as f:
            self.assertEqual(ws["msgs"][-1][1], f.read())
        watcher.loop_stop()


    def test_revocation_closes_connections_that_have_not_sent_connect(self):
        # Several connections per worker (--workers 2): the handshake is done
        # before the revocation, the CONNECT would come after it.
        self.setup_fleet()
        crt, key, d = self.register("dev-1")
        held = [self.raw_tls(crt, key) for _ in range(6)]
        # Control: a held connection is served (CONNECT answered) before the revocation.
        probe = self.raw_tls(crt, key)
        probe.sendall(CONNECT_V311)
        probe.settimeout(5)
        self.assertEqual(probe.recv(4), b"\x20\x02\x00\x00")  # CONNACK, accepted
        probe.close()
        c, st = self.connect(crt, key, "dev-1")  # and the device itself, connected
        self.assertEqual(st["rc"], 0)
        self.admin("cert.revoke", "serial=" + d["certificate_serial"])
        for i, s in enumerate(held):
            self.assertTrue(self.closed_by_broker(s), "held connection %d survived the revocation" % i)
            s.close()
        c.loop_stop()
        # Nothing with that certificate gets in afterwards.
        self.assertTrue(self.refused(crt, key))
        # The six held connections and the device's own, each closed once.
        self.assertEqual(self.broker.read_log().count("closed: administrative"), 7, self.broker.read_log()[-3000:])
        self.assertEqual(st["disconnected"][1].value, 0x98)  # v5 DISCONNECT: administrative action

    def test_operator_certificate_revoked_by_an_external_crl_on_every_worker(self):
        # An operator certificate (not in the registry) is revoked by a CRL
        # file dropped into the CRL directory: its connections on both
        # workers are closed on the reload, not only new handshakes refused.
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir, "--tenant", "default", "--operator", "carol",
                     "--out", self.tmp])
        self.assertEqual(r.returncode, 0, r.stderr)
        carol = (os.path.join(self.tmp, "carol.crt"), os.path.join(self.tmp, "carol.key"))
        serial = run_cli(["openssl", "x509", "-in", carol[0], "-noout", "-serial"]).stdout.strip().split("=")[1]
        conns = [self.connect(*carol, id_on(w, "carol", tenant="default")) for w in (0, 1)]
        for _, st in conns:
            self.assertEqual(st["rc"], 0)
        held = self.raw_tls(*carol)  # and one that has not sent CONNECT
        other, so = self.connect(*self.op_cert(), "ops-other")  # a control that must survive
        self.assertEqual(so["rc"], 0)
        r = subprocess.run([PKI, "crl", "--dir", self.broker.data_dir, "--tenant", "default", "--serial", serial],
                           stdout=subprocess.PIPE, timeout=10)
        self.assertEqual(r.returncode, 0)
        with open(os.path.join(self.broker.data_dir, "crl", "ops.crl"), "wb") as f:
            f.write(r.stdout)
        self.broker.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 3
        while any(st["disconnected"] is None for _, st in conns) and time.time() < deadline:
            time.sleep(0.02)
        for cl, st in conns:
            self.assertIsNotNone(st["disconnected"], "operator connection survived the revocation")
            self.assertEqual(st["disconnected"][1].value, 0x98)
            cl.loop_stop()
        self.assertTrue(self.closed_by_broker(held))
        held.close()
        self.assertIsNone(so["disconnected"])
        self.assertTrue(self.refused(*carol))
        other.disconnect()
        other.loop_stop()

    def test_refused_handshakes_of_a_revoked_device_are_audited_once_per_window(self):
        self.setup_fleet()
        crt, key, d = self.register("dev-1")
        self.admin("device.decommission", "device_id=dev-1")
        for _ in range(5):  # a device in a reconnect loop
            self.assertTrue(self.refused(crt, key))
        deadline = time.time() + 5
        denied = []
        while time.time() < deadline:
            entries = self.admin("audit.query", "device_id=dev-1", "limit=1000")["entries"]
            denied = [e for e in entries if e["action"] == "device.connect"]
            if denied:
                break
            time.sleep(0.1)
        self.assertEqual(len(denied), 1, denied)  # one entry, not one per attempt
        self.assertIn("revoked", denied[0]["result"])
        self.assertTrue(denied[0]["result"].startswith("denied"), denied[0])
        self.assertTrue(self.admin("audit.verify")["valid"])


# A minimal MQTT 3.1.1 CONNECT: client id "dev-1", clean session, keep alive 30.
CONNECT_V311 = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 5]) + b"dev-1"
# The same with an empty client id (a device is given its own).
CONNECT_ANY = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])


class ExternalCrl(AdminBase):
    def issue(self, name):
        crt, key = self.device(name)
        serial = run_cli(["openssl", "x509", "-in", crt, "-noout", "-serial"]).stdout.strip().split("=")[1]
        return crt, key, serial

    def test_load_and_reload_without_restart(self):
        crl_dir = os.path.join(self.broker.data_dir, "crl")
        good = self.issue("dev-good")
        bad = self.issue("dev-bad")
        # Garbage and a CRL signed by another CA: refused with a log line, no effect.
        with open(os.path.join(crl_dir, "junk.crl"), "wb") as f:
            f.write(b"not a crl at all")
        other = os.path.join(self.tmp, "other-pki")
        self.assertEqual(run_cli([PKI, "init", "--dir", other]).returncode, 0)
        r = subprocess.run([PKI, "crl", "--dir", other, "--tenant", "default", "--serial", good[2]],
                           stdout=subprocess.PIPE, timeout=10)
        self.assertEqual(r.returncode, 0)
        with open(os.path.join(crl_dir, "forged.crl"), "wb") as f:
            f.write(r.stdout)  # names our tenant, signed by another CA
        self.broker.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "junk.crl refused" in self.broker.read_log()))
        self.assertIn("forged.crl refused", self.broker.read_log())
        c, st = self.connect(good[0], good[1], "dev-good")
        self.assertEqual(st["rc"], 0)
        c.disconnect()
        c.loop_stop()
        # A CRL of the tenant CA revoking dev-bad, dropped into the directory:
        # picked up within the 5 s poll, no restart, no SIGHUP.
        r = subprocess.run([PKI, "crl", "--dir", self.broker.data_dir, "--tenant", "default", "--serial", bad[2]],
                           stdout=subprocess.PIPE, timeout=10)
        self.assertEqual(r.returncode, 0)
        with open(os.path.join(crl_dir, "ops.tmp"), "wb") as f:
            f.write(r.stdout)
        os.rename(os.path.join(crl_dir, "ops.tmp"), os.path.join(crl_dir, "ops.crl"))
        # Connections keep working while the reload happens.
        deadline = time.time() + 8
        refused = False
        ok_during = 0
        while time.time() < deadline and not refused:
            c, st = self.connect(good[0], good[1], "dev-good")
            ok_during += st["rc"] == 0
            c.disconnect()
            c.loop_stop()
            refused = self.refused(bad[0], bad[1])
        self.assertTrue(refused, "external CRL not applied")
        self.assertGreater(ok_during, 0)
        c, st = self.connect(good[0], good[1], "dev-good")
        self.assertEqual(st["rc"], 0)
        c.disconnect()
        c.loop_stop()
        # Removing the file lifts the revocation on reload.
        os.remove(os.path.join(crl_dir, "ops.crl"))
        self.broker.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: not self.refused(bad[0], bad[1]), step=0.1), "revocation not lifted")


class Connectivity(AdminBase):
    flags = ("--limits.max_keepalive=2",)

    def test_events_and_offline_bound(self):
        self.setup_fleet()
        crt, key, _ = self.register("dev-1")
        watcher, ws = self.connect(*self.op_cert(), "watcher", keepalive=2)
        subacked = []
        watcher.on_subscribe = lambda cl, u, mid, codes, p=None: subacked.append([x.value for x in codes])
        watcher.subscribe("$SYS/fleetmq/events/v1/connectivity/+", qos=1)
        self.assertEqual(wait_for(lambda: subacked), [[1]])
        # A device that stops talking: paho with keepalive 2 and its loop stopped.
        c, st = self.connect(crt, key, "dev-1", keepalive=2)
        self.assertEqual(st["rc"], 0)
        t_connected = time.time()
        c.loop_stop()  # no more PINGREQ
        deadline = time.time() + 6
        events = []
        while time.time() < deadline:
            events = [json.loads(m[1]) for m in ws["msgs"]]
            if any(e["event"] == "disconnected" for e in events):
                break
            time.sleep(0.05)
        self.assertEqual([e["event"] for e in events], ["connected", "disconnected"], events)
        self.assertEqual([e["seq"] for e in events], [events[0]["seq"], events[0]["seq"] + 1])
        self.assertEqual(events[1]["reason"], "keepalive_timeout")
        # 1.5 x keep alive (3 s) after the last packet (the CONNECT), plus the
        # 250 ms tick; and never before it (t_connected was taken after the
        # CONNACK, so the bound below has the CONNACK's round trip in hand).
        silent = events[1]["time_ms"] / 1000.0 - t_connected
        self.assertLess(silent, 3.0 + 0.6)
        self.assertGreaterEqual(silent, 3.0 - 0.1, "marked offline before 1.5 x keep alive")
        dev = self.admin("device.get", "device_id=dev-1")
        self.assertEqual(dev["online"], False)
        self.assertEqual(dev["last_disconnect_reason"], "keepalive_timeout")
        watcher.loop_stop()


class DefaultOfflineBound(AdminBase):
    def test_silent_devices_shown_offline_within_30_s_by_default(self):
        """No keep alive flags: a v5 device asking for 60 s is told 18 (Server
        Keep Alive) and shown offline 27 s after it went silent; a 3.1.1
        device must ask for 18 itself (doc/configuration.md) and gets the
        same bound. Both well inside the seed's 30 s."""
        self.setup_fleet()
        c5, k5, _ = self.register("dev-5")
        c3, k3, _ = self.register("dev-3")
        watcher, ws = self.connect(*self.op_cert(), "watcher", keepalive=15)  # paho 1.6 ignores Server Keep Alive
        subacked = []
        watcher.on_subscribe = lambda cl, u, mid, codes, p=None: subacked.append(1)
        watcher.subscribe("$SYS/fleetmq/events/v1/connectivity/+", qos=1)
        self.assertTrue(wait_for(lambda: subacked))
        v5, st5 = self.connect(c5, k5, "dev-5", keepalive=60)
        v3, st3 = self.connect(c3, k3, "dev-3", v5=False, keepalive=18)
        self.assertEqual((st5["rc"], st3["rc"]), (0, 0))
        silent_from = time.time()
        v5.loop_stop()  # both go silent (no PINGREQ)
        v3.loop_stop()

        def offline():
            return {e["device_id"]: e for e in (json.loads(m[1]) for m in ws["msgs"])
                    if e["event"] == "disconnected"}
        self.assertTrue(wait_for(lambda: len(offline()) == 2, timeout=35, step=0.1), ws["msgs"])
        for dev, e in offline().items():
            after = e["time_ms"] / 1000.0 - silent_from
            self.assertEqual(e["reason"], "keepalive_timeout", e)
            self.assertLess(after, 30.0, (dev, after))
            self.assertGreaterEqual(after, 27.0 - 0.2, (dev, after))
        watcher.loop_stop()


class CertExpiry(AdminBase):
    flags = ("--certs.device_validity_days=10",)

    def test_expiring_certificates_noticed_listed_and_counted(self):
        """Device certificates issued for 10 days (inside the 30-day notice
        window): each gets one notice at once — an audit entry of its device
        and an event on the tenant's certs/expiring topic — and is listed by
        cert.expiring and the histogram; a revoked one leaves both. The
        certificate itself says 10 days (openssl)."""
        self.setup_fleet()
        watcher, ws = self.connect(*self.op_cert(), "watcher")
        subacked = []
        watcher.on_subscribe = lambda cl, u, mid, codes, p=None: subacked.append(1)
        watcher.subscribe("$SYS/fleetmq/events/v1/certs/expiring", qos=1)
        self.assertTrue(wait_for(lambda: subacked))
        crt, _, d1 = self.register("exp-1")
        _, _, d2 = self.register("exp-2")
        days = (d1["expires_at_ms"] / 1000.0 - time.time()) / 86400
        self.assertAlmostEqual(days, 10, delta=0.1)
        r = run_cli(["openssl", "x509", "-in", crt, "-noout", "-enddate"])
        self.assertIn("notAfter", r.stdout)
        self.assertTrue(wait_for(lambda: len(ws["msgs"]) >= 2, timeout=10), ws["msgs"])
        events = sorted((json.loads(m[1]) for m in ws["msgs"]), key=lambda e: e["device_id"])
        self.assertEqual([e["device_id"] for e in events], ["exp-1", "exp-2"])
        self.assertEqual(events[0]["serial"], d1["certificate_serial"])
        self.assertEqual(events[0]["days_left"], 9)
        self.assertFalse(events[0]["expired"])
        hist = self.admin("audit.query", "device_id=exp-1")["entries"]
        self.assertEqual([e["action"] for e in hist].count("cert.expiring"), 1, hist)
        lst = self.admin("cert.expiring")
        self.assertEqual(sorted(c["serial"] for c in lst["certificates"]),
                         sorted([d1["certificate_serial"], d2["certificate_serial"]]))
        self.assertEqual(self.admin("cert.expiring", "days=5")["certificates"], [])
        h = self.admin("cert.expiry_histogram", "weeks=3")
        self.assertEqual(h["weeks"], [0, 2, 0], h)
        page = self.admin("cert.expiring", "limit=1")
        self.assertEqual(len(page["certificates"]), 1)
        rest = self.admin("cert.expiring", "limit=1", "cursor=" + page["next_cursor"])
        self.assertEqual(len(rest["certificates"]), 1)
        self.assertNotEqual(rest["certificates"][0]["serial"], page["certificates"][0]["serial"])
        bad = self.admin("cert.expiring", "cursor=zz", ok=False)
        self.assertIn("invalid_argument", bad.stdout + bad.stderr)
        self.admin("cert.revoke", "serial=" + d2["certificate_serial"])
        self.assertEqual([c["device_id"] for c in self.admin("cert.expiring")["certificates"]], ["exp-1"])
        self.assertEqual(self.admin("cert.expiry_histogram", "weeks=3")["weeks"], [0, 1, 0])
        # A restart (kill -9) sends nothing twice.
        watcher.loop_stop()
        self.broker.kill9_and_restart()
        watcher, ws = self.connect(*self.op_cert(), "watcher2")
        watcher.subscribe("$SYS/fleetmq/events/v1/certs/expiring", qos=1)
        time.sleep(2)
        self.assertEqual(ws["msgs"], [])
        hist = self.admin("audit.query", "device_id=exp-1")["entries"]
        self.assertEqual([e["action"] for e in hist].count("cert.expiring"), 1, hist)
        watcher.loop_stop()


if __name__ == "__main__":
    unittest.main()
