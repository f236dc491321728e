#!/usr/bin/env python3
"""Configuration catch-up latency (doc/configuration-management.md): a device
that missed changes while offline is APPLIED on the latest version shortly
after it reconnects, with no request of its own. A broker on loopback; for
each of --cycles reconnects, one of --devices devices is offline while an
operator makes --changes changes to its own document (one control request),
then it connects (mutual TLS, handshake done first, not timed), subscribes
to its channel, applies the one config/desired it gets and reports APPLIED.
The time measured is from its CONNECT to the broker's
config/report/accepted (the APPLIED state stored): p50/p99/max, and the
number of config/desired messages per reconnect (must be 1).

  bench/config_catchup.py --build build [--cycles 1000] [--devices 10] [--changes 5]

Loopback only; everything is stopped at the end.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
import local_broker  # noqa: E402
from harness import mqtt5_connect, mqtt5_publish, mqtt5_subscribe, read_packet, parse_publish  # noqa: E402


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def sha(doc):
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


class Conn:
    """One MQTT 5 client over mutual TLS on a blocking socket."""

    def __init__(self, port, ca, crt, key, client_id):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(crt, key)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as devices do (fleetmq-device too)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.s.do_handshake()
        self.client_id = client_id
        self.pid = 1

    def connect(self):
        self.s.sendall(mqtt5_connect(self.client_id))
        first, body = read_packet(self.s)
        assert first == 0x20 and body[1] == 0, body

    def publish(self, topic, payload):
        self.pid += 1
        self.s.sendall(mqtt5_publish(topic, payload.encode(), 1, self.pid))

    def next_publish(self):
        """(topic, payload) of the next PUBLISH (acknowledged); other packets skipped."""
        while True:
            first, body = read_packet(self.s)
            if first & 0xF0 == 0x30:
                topic, pid, payload = parse_publish(body)
                self.s.sendall(b"\x40\x02" + pid)
                return topic, json.loads(payload)

    def close(self):
        try:
            self.s.sendall(b"\xe0\x00")
            self.s.close()
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--changes", type=int, default=5)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="fleetmq-catchup-")
    broker = None
    try:
        broker, _, tls = local_broker.start(b, d)
        pki = d + "/data/pki"
        admin = [b + "/tools/fleetmq-admin", "--data_dir", d + "/data", "--port", str(tls)]
        subprocess.run(admin + ["model.create", "model_id=m"], check=True, capture_output=True)
        subprocess.run([b + "/tools/fleetmq-pki", "devices", "--dir", d + "/data", "--tenant", "default", "--prefix",
                        "c", "--count", str(a.devices), "--out", d + "/certs"], check=True, capture_output=True)
        cmds = [{"command": "device.register", "device_id": "c%d" % i, "serial_number": "s%d" % i, "model_id": "m"}
                for i in range(a.devices)]
        subprocess.run(admin + ["--raw", json.dumps({"commands": cmds})], check=True, capture_output=True)
        op = Conn(tls, pki + "/root.crt", pki + "/operator.crt", pki + "/operator.key", "bench-op")
        op.connect()
        op.s.sendall(mqtt5_subscribe("$SYS/fleetmq/control/v1/reply/bench-op", 1, 1))
        read_packet(op.s)  # SUBACK
        have = {i: ({}, 0, sha({})) for i in range(a.devices)}  # device → (document, version, hash)
        lat, messages = [], []
        n = 0
        for cycle in range(a.cycles):
            i = cycle % a.devices
            dev = "c%d" % i
            reqs = [{"command": "config.set", "device_id": dev,
                     "patch": {"cycle": cycle, "k%d" % (n + j): j, "step": n + j}} for j in range(a.changes)]
            n += a.changes
            op.publish("$SYS/fleetmq/control/v1", json.dumps({"commands": reqs}))
            _, reply = op.next_publish()
            assert all(r["status"] == "ok" for r in reply["responses"]), reply
            c = Conn(tls, pki + "/root.crt", "%s/certs/%s.crt" % (d, dev), "%s/certs/%s.key" % (d, dev), dev)
            t0 = time.perf_counter()
            c.connect()
            c.s.sendall(mqtt5_subscribe("$fleetmq/v1/devices/%s/#" % dev, 1, 1))
            got = 0
            doc, version, h = have[i]
            while True:
                topic, m = c.next_publish()
                if topic.endswith("/config/desired"):
                    got += 1
                    nxt = m["document"] if "document" in m else merge_patch(doc, m["patch"])
                    assert "document" in m or m["base_hash"] == h, m
                    assert sha(nxt) == m["hash"], (nxt, m)
                    doc, version, h = nxt, m["version"], m["hash"]
                    c.publish("$fleetmq/v1/devices/%s/config/report" % dev,
                              json.dumps({"version": version, "status": "APPLIED", "hash": h}))
                elif topic.endswith("/config/report/accepted") and m["version"] == version:
                    break
            lat.append((time.perf_counter() - t0) * 1000)
            messages.append(got)
            have[i] = (doc, version, h)
            c.close()
        lat.sort()
        q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 2)
        print(json.dumps({"cycles": a.cycles, "devices": a.devices, "changes_per_cycle": a.changes,
                          "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(lat[-1], 2),
                          "desired_messages_per_reconnect": sorted(set(messages))}))
        op.close()
        return 0 if q(0.99) < 50 and set(messages) == {1} else 1
    finally:
        if broker is not None and broker.poll() is None:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                broker.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
