#!/usr/bin/python3
"""Admin control-plane throughput and latency against a running fleetmq
(e.g. `tools/dev.sh run`), over MQTT 5 / mutual TLS with the operator
certificate of the data dir:

    bench/admin_bench.py --data_dir ./data [--port 8883] [--devices 5000] [--csr 200]

- registers --devices devices without certificates, 100 commands per request;
- registers --csr devices with a CSR each (certificate issued: ECDSA signing);
- times 200 sequential device.get round trips.
Prints one JSON line. Creates model/group `bench-m`/`bench-g` and devices
`bench-<run>-<n>` in the operator's tenant; bounded by the counts given.
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Admin:
    def __init__(self, data_dir, port):
        pki = os.path.join(data_dir, "pki")
        self.c = mqtt.Client(client_id="admin-bench-%d" % os.getpid(), protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=os.path.join(pki, "root.crt"), certfile=os.path.join(pki, "operator.crt"),
                       keyfile=os.path.join(pki, "operator.key"))
        self.reply_topic = "$SYS/fleetmq/control/v1/reply/admin-bench-%d" % os.getpid()
        self.cv = threading.Condition()
        self.replies = {}
        self.c.on_message = self.on_message
        self.c.connect("localhost", port, 60)
        # paho leaves Nagle on: a small request after the PUBACK of the last
        # reply would wait for the broker's delayed ACK (~40 ms).
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.subscribe(self.reply_topic, qos=1)
        self.c.loop_start()
        time.sleep(0.3)
        self.n = 0

    def on_message(self, c, u, m):
        corr = m.properties.CorrelationData.decode() if hasattr(m.properties, "CorrelationData") else ""
        with self.cv:
            self.replies[corr] = json.loads(m.payload)
            self.cv.notify_all()

    def send(self, commands):
        self.n += 1
        corr = str(self.n)
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = self.reply_topic
        p.CorrelationData = corr.encode()
        self.c.publish("$SYS/fleetmq/control/v1", json.dumps({"commands": commands}), qos=1, properties=p)
        return corr

    def wait(self, corr, timeout=60):
        with self.cv:
            self.cv.wait_for(lambda: corr in self.replies, timeout)
            return self.replies.pop(corr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default="./data")
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--csr", type=int, default=200)
    args = ap.parse_args()
    a = Admin(args.data_dir, args.port)
    run = str(int(time.time()))
    a.wait(a.send([{"command": "model.create", "model_id": "bench-m"}, {"command": "group.create", "group_id": "bench-g"}]))
    t0 = time.time()
    pending = []
    for start in range(0, args.devices, 100):
        cmds = [{"command": "device.register", "serial_number": "S-%s-%d" % (run, i), "model_id": "bench-m",
                 "group_ids": ["bench-g"], "device_id": "bench-%s-%d" % (run, i)}
                for i in range(start, min(args.devices, start + 100))]
        pending.append(a.send(cmds))
        if len(pending) >= 8:  # a bounded window of requests in flight
            r = a.wait(pending.pop(0))
            assert all(x["status"] == "ok" for x in r["responses"]), r
    for p in pending:
        a.wait(p)
    plain = args.devices / (time.time() - t0)
    tmp = tempfile.mkdtemp()
    key = os.path.join(tmp, "k.pem")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    csrs = []
    for i in range(args.csr):
        name = "bench-%s-c%d" % (run, i)
        csrs.append((name, subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=" + name],
                                          check=True, stdout=subprocess.PIPE, text=True).stdout))
    t0 = time.time()
    for start in range(0, len(csrs), 50):
        cmds = [{"command": "device.register", "serial_number": "SC-" + n, "model_id": "bench-m", "device_id": n, "csr": c}
                for n, c in csrs[start:start + 50]]
        r = a.wait(a.send(cmds))
        assert all(x["status"] == "ok" for x in r["responses"]), r
    with_cert = len(csrs) / (time.time() - t0)
    lat = []
    for i in range(200):
        t = time.time()
        r = a.wait(a.send([{"command": "device.get", "device_id": "bench-%s-%d" % (run, i % max(1, args.devices))}]))
        lat.append((time.time() - t) * 1000)
        assert r["responses"][0]["status"] == "ok", r
    lat.sort()
    print(json.dumps({"register_per_s": round(plain), "register_with_certificate_per_s": round(with_cert, 1),
                      "device_get_rtt_ms_p50": round(lat[100], 2), "device_get_rtt_ms_p99": round(lat[197], 2)}))


if __name__ == "__main__":
    main()
