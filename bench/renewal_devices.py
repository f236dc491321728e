#!/usr/bin/env python3
"""Certificate renewal over MQTT, end to end, with N real devices
(doc/certificate-profile.md "Renewal"): a broker on loopback, N
fleetmq-device devices over mutual TLS, one cert.renew job of the whole
fleet at --rate renewals/s (0: as fast as the broker goes). Each renewal is
the request, a new key and CSR on the device, one ECDSA signature and a
store write on the broker, the certificate back, and the device's new
mutual-TLS connection with it. Reports renewals/s, broker CPU per renewal,
and what the wave does to concurrent traffic: the QoS 1 round trip of a
client publishing to itself on the plain port every 20 ms, before and during
the wave (p50/p99).

  bench/renewal_devices.py --build build [--devices 2000] [--rate 0] [--workers 2]

Loopback only; everything is stopped at the end."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

import local_broker



class Pinger:
    """Publishes QoS 1 to its own topic every 20 ms; keeps (time, rtt ms)."""

    def __init__(self, port):
        self.samples, self.sent, self.stop = [], {}, False
        self.c = mqtt.Client(client_id="pinger", protocol=mqtt.MQTTv311)
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.subscribe("bench/ping", qos=1)
        self.c.loop_start()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def on_message(self, c, u, m):
        k = m.payload.decode()
        if k in self.sent:
            self.samples.append((time.time(), (time.time() - self.sent.pop(k)) * 1000))

    def run(self):
        i = 0
        while not self.stop:
            k = str(i)
            self.sent[k] = time.time()
            self.c.publish("bench/ping", k, qos=1)
            i += 1
            time.sleep(0.02)

    def window(self, t0, t1):
        v = sorted(r for t, r in self.samples if t0 <= t < t1)
        if not v:
            return None
        return {"n": len(v), "p50_ms": round(v[len(v) // 2], 2), "p99_ms": round(v[int(len(v) * 0.99)], 2)}

    def close(self):
        self.stop = True
        self.t.join()
        self.c.loop_stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="fleetmq-renewal-")
    broker = agent = pinger = None
    phases = {}
    try:
        broker, port, tls = local_broker.start(b, d, "--workers", str(a.workers), "--sys_interval", "1")
        admin = [b + "/tools/fleetmq-admin", "--data_dir", d + "/data", "--timeout", "60", "--port", str(tls)]

        refused = [0]

        def run(*args):
            # An operator's new connection competes with the devices' new
            # handshakes for the TLS budget: refused ones are counted and retried.
            for _ in range(60):
                r = subprocess.run(admin + ["--json"] + list(args), capture_output=True, text=True)
                if r.returncode == 0:
                    return json.loads(r.stdout)["data"]
                if "handshake refused" not in r.stderr:
                    break
                refused[0] += 1
                time.sleep(0.5)
            raise RuntimeError("%s: %s %s" % (args, r.stdout, r.stderr))
        run("model.create", "model_id=m", "manufacturer=bench")
        local_broker.register_fleet(b, d, admin, a.devices, phases)
        t0 = time.time()
        agent = subprocess.Popen([b + "/tools/fleetmq-device", "--port", str(tls), "--ca", d + "/data/pki/root.crt",
                                  "--certs", d + "/certs", "--prefix", "d", "--count", str(a.devices), "--window",
                                  "256"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while local_broker.sys_value(port, "$SYS/broker/clients/connected") < a.devices:
            if agent.poll() is not None or time.time() - t0 > 1800:
                print("devices did not connect", file=sys.stderr)
                return 1
            time.sleep(1)
        phases["connect_s"] = round(time.time() - t0, 1)
        pinger = Pinger(port)
        time.sleep(5)
        base0 = time.time()
        time.sleep(5)
        cpu0, t0 = local_broker.cpu_seconds(broker.pid), time.time()
        rollout = json.dumps({"rate_per_s": a.rate, "max_in_flight": 10000}) if a.rate else '{"max_in_flight":10000}'
        run("cert.renew", "job_id=wave", "model_id=m", "rollout=" + rollout, 'timeouts={"in_progress_s":600}')
        while True:
            j = run("job.get", "job_id=wave")
            if j["status"] in ("COMPLETED", "ABORTED", "CANCELED"):
                break
            if time.time() - t0 > 1800:
                print("the wave did not finish: %s" % j, file=sys.stderr)
                return 1
            time.sleep(0.5)
        took = time.time() - t0
        cpu = local_broker.cpu_seconds(broker.pid) - cpu0
        ok = j["counts"]["SUCCEEDED"]
        result = {"devices": a.devices, "rate": a.rate, "workers": a.workers, "setup": phases,
                  "status": j["status"], "succeeded": ok, "counts": {k: v for k, v in j["counts"].items() if v},
                  "wave_s": round(took, 1), "renewals_per_s": round(ok / took, 1),
                  "broker_cpu_s": round(cpu, 1), "broker_cpu_ms_per_renewal": round(cpu * 1000 / ok, 2) if ok else None,
                  "rtt_before": pinger.window(base0, t0), "rtt_during": pinger.window(t0, t0 + took),
                  "admin_connects_refused": refused[0]}
        print(json.dumps(result))
        return 0
    finally:
        if pinger:
            pinger.close()
        local_broker.stop(d, agent, broker)


if __name__ == "__main__":
    sys.exit(main())
