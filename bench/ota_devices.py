#!/usr/bin/env python3
"""Firmware campaigns over N real devices (doc/ota.md): a broker on loopback,
N fleetmq-device simulated devices over mutual TLS (one socket each: N up to
~19,900 under the 20,000-file limit), an image uploaded with fleetmq-admin
firmware.upload, one campaign created with ota.create. Scenarios:

  delivery  in-band delivery of a --image-kb image to every device: campaign
            time, MB/s, devices/s, broker CPU per MiB; with --telemetry, the
            p99 round trip of a QoS 1 telemetry stream (a paho client
            publishing to a topic it subscribes to, --telemetry-rate msg/s)
            before and during the campaign
  waves     3 waves (10 %, 45 %, 45 %) with a 90 % success gate, --fail-pct
            of devices fail to install: the campaign must pause before wave 2;
            reports the time from the last wave-1 execution ending to PAUSED;
            then the same with abort action rollback: wave 1 returns to 1.0.0
  never     the firmware never boots: every execution TIMED_OUT at the reboot
            deadline (--reboot-s), time from the last install to the verdict

  bench/ota_devices.py --build build [--scenario delivery] [--devices 19900] [--image-kb 1024]
      [--workers 2] [--telemetry] [--tenant-mib-s 64] [--device-mib-s 4]

Setup (certificates, registration, connecting) is timed separately. Loopback
only; everything is stopped at the end.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import local_broker

cpu_seconds = local_broker.cpu_seconds


def image(n):
    out = bytearray()
    h = b"bench"
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])


class Telemetry(threading.Thread):
    """QoS 1 publishes to a topic the same client subscribes to; round trips in ms, by wall time."""

    def __init__(self, port, rate):
        super().__init__(daemon=True)
        import paho.mqtt.client as mqtt
        self.c = mqtt.Client(client_id="telemetry-probe", protocol=mqtt.MQTTv5)
        self.rate, self.sent, self.samples, self.stop = rate, {}, [], False
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("probe/t", qos=1)
        self.c.loop_start()
        time.sleep(0.5)

    def on_message(self, c, u, m):
        t0 = self.sent.pop(m.payload.decode(), None)
        if t0 is not None:
            self.samples.append((time.time(), (time.time() - t0) * 1000))

    def run(self):
        i = 0
        while not self.stop:
            key = str(i)
            self.sent[key] = time.time()
            self.c.publish("probe/t", key, qos=1)
            i += 1
            time.sleep(1.0 / self.rate)

    def p99(self, t_from, t_to):
        xs = sorted(ms for t, ms in self.samples if t_from <= t < t_to)
        if not xs:
            return None
        return {"n": len(xs), "p50_ms": round(xs[len(xs) // 2], 2), "p99_ms": round(xs[int(len(xs) * 0.99)], 2),
                "max_ms": round(xs[-1], 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--scenario", choices=("delivery", "waves", "never"), default="delivery")
    ap.add_argument("--devices", type=int, default=19900)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--image-kb", type=int, default=1024)
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--fail-pct", type=float, default=20)
    ap.add_argument("--reboot-s", type=float, default=10)
    ap.add_argument("--tenant-mib-s", type=float, default=64)
    ap.add_argument("--device-mib-s", type=float, default=4)
    ap.add_argument("--max-in-flight", type=int, default=2000)
    ap.add_argument("--telemetry", action="store_true")
    ap.add_argument("--telemetry-rate", type=float, default=50)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="fleetmq-otadev-")
    broker = agent = probe = None
    phases = {}
    try:
        broker, port, tls = local_broker.start(
            b, d, "--workers", str(a.workers), "--sys_interval", "1",
            "--ota.tenant_bytes_per_s=%d" % int(a.tenant_mib_s * (1 << 20)),
            "--ota.device_bytes_per_s=%d" % int(a.device_mib_s * (1 << 20)))
        admin = [b + "/tools/fleetmq-admin", "--data_dir", d + "/data", "--timeout", "120", "--port", str(tls)]

        def run(*args, json_out=False):
            r = subprocess.run(admin + (["--json"] if json_out else []) + list(args), check=True, capture_output=True,
                               text=True)
            return json.loads(r.stdout)["data"] if json_out else r.stdout
        run("model.create", "model_id=m", "manufacturer=bench")
        local_broker.register_fleet(b, d, admin, a.devices, phases)
        size = a.image_kb * 1024
        for version, data in (("1.0.0", image(4096)), ("2.0.0", image(size))):
            path = os.path.join(d, version + ".bin")
            with open(path, "wb") as f:
                f.write(data)
            t0 = time.time()
            run("firmware.upload", "model_id=m", "version=" + version, "file=@" + path)
            phases["upload_%s_s" % version] = round(time.time() - t0, 2)
        knobs = {"delivery": [], "waves": ["--ota-fail-pct", str(a.fail_pct)], "never": ["--ota-never-pct", "100"]}
        log = os.path.join(d, "devices.log")
        t0 = time.time()
        agent = subprocess.Popen([b + "/tools/fleetmq-device", "--port", str(tls), "--ca", d + "/data/pki/root.crt",
                                  "--certs", d + "/certs", "--prefix", "d", "--count", str(a.devices), "--window",
                                  str(a.window), "--block", str(a.block), "--firmware", "1.0.0", "--log", log] +
                                 knobs[a.scenario], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while True:
            r = subprocess.run(["mosquitto_sub", "-p", str(port), "-t", "$SYS/broker/clients/connected", "-C", "1",
                                "-W", "3"], capture_output=True, text=True)
            if int(r.stdout.strip() or 0) >= a.devices:
                break
            if agent.poll() is not None or time.time() - t0 > 1800:
                print("devices did not connect", file=sys.stderr)
                return 1
            time.sleep(1)
        phases["connect_s"] = round(time.time() - t0, 1)
        time.sleep(5)  # connectivity events, version reports and their audit settle
        result = {"scenario": a.scenario, "devices": a.devices, "workers": a.workers, "image_kib": a.image_kb,
                  "block": a.block, "tenant_mib_s": a.tenant_mib_s, "device_mib_s": a.device_mib_s, "setup": phases}

        def watch(job_id):
            w = subprocess.run(admin + ["--json", "job.watch", "job_id=" + job_id, "until_paused=true"],
                               capture_output=True, text=True)
            return json.loads(w.stdout.strip().splitlines()[-1])

        if a.scenario == "delivery":
            if a.telemetry:
                probe = Telemetry(port, a.telemetry_rate)
                probe.start()
                time.sleep(10)
            cpu0 = cpu_seconds(broker.pid)
            t0 = time.time()
            run("ota.create", "model_id=m", "version=2.0.0", "all=true", "job_id=bench",
                'rollout={"max_in_flight":%d}' % a.max_in_flight)
            g = watch("bench")
            took = time.time() - t0
            cpu = cpu_seconds(broker.pid) - cpu0
            mib = a.devices * size / (1 << 20)
            result["campaign"] = {"s": round(took, 1), "status": g["status"], "succeeded": g["counts"]["SUCCEEDED"],
                                  "devices_per_s": round(a.devices / took, 1), "mib_per_s": round(mib / took, 1),
                                  "broker_cpu_s": round(cpu, 1),
                                  "broker_cpu_ms_per_mib": round(cpu * 1000 / mib, 2)}
            if probe is not None:
                time.sleep(5)
                probe.stop = True
                result["telemetry"] = {"before": probe.p99(t0 - 10, t0), "during": probe.p99(t0, t0 + took)}
            ok = g["counts"]["SUCCEEDED"] == a.devices
        elif a.scenario == "waves":
            runs = {}
            for name, extra in (("gate", 'rollout={"waves":[{"percent":10},{"percent":45},{"percent":45}],'
                                         '"success_gate_pct":90,"max_in_flight":%d}' % a.max_in_flight),
                                ("rollback", 'rollout={"waves":[{"percent":10},{"percent":45},{"percent":45}],'
                                             '"max_in_flight":%d}' % a.max_in_flight)):
                args = ["ota.create", "model_id=m", "version=2.0.0", "all=true", "job_id=" + name, extra]
                if name == "rollback":
                    args.append('abort={"threshold_pct":15,"min_executed":%d,"action":"rollback"}' %
                                max(10, a.devices // 20))
                t0 = time.time()
                run(*args)
                g = watch(name)
                took = time.time() - t0
                ends = []
                cursor = ""
                while True:
                    page = run("job.executions", "job_id=" + name, "limit=1000",
                               *(["cursor=" + cursor] if cursor else []), json_out=True)
                    ends += [e["updated_at_ms"] for e in page["executions"] if e["state"] not in ("QUEUED",
                                                                                                   "CANCELED")]
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                r = {"s_to_" + g["status"].lower(): round(took, 1), "counts": {k: v for k, v in g["counts"].items()
                                                                               if v}}
                if g["status"] == "PAUSED":
                    r["reason"] = g.get("reason")
                    r["ms_from_last_wave1_end_to_pause"] = g["time_ms"] - max(ends)
                    run("job.cancel", "job_id=" + name)
                if name == "rollback":
                    # Created once the executions in flight at the abort settled.
                    t1 = time.time()
                    while subprocess.run(admin + ["job.get", "job_id=" + name + "-rollback"],
                                         capture_output=True).returncode != 0:
                        if time.time() - t1 > 600:
                            raise RuntimeError("no rollback job after 600 s")
                        time.sleep(0.5)
                    r["s_abort_to_rollback_job"] = round(time.time() - t1, 1)
                    rb = watch(name + "-rollback")
                    r["rollback_job"] = {"status": rb["status"], "succeeded": rb["counts"]["SUCCEEDED"]}
                runs[name] = r
                if name == "gate":  # the wave-1 devices that updated go back before the next run
                    if g["counts"]["SUCCEEDED"]:
                        run("ota.rollback", "job_id=gate")
                        watch("gate-rollback")
            result["runs"] = runs
            ok = runs["gate"].get("reason") is not None and runs["rollback"]["rollback_job"]["status"] == "COMPLETED"
        else:
            t0 = time.time()
            run("ota.create", "model_id=m", "version=2.0.0", "all=true", "job_id=never",
                'rollout={"max_in_flight":%d}' % a.max_in_flight, 'timeouts={"reboot_s":%g}' % a.reboot_s)
            g = watch("never")
            took = time.time() - t0
            gone = {}
            with open(log) as f:
                for line in f:
                    e = json.loads(line)
                    if e.get("status") == "NEVER_BACK":
                        gone[e["device"]] = e["wall_ms"]
            lag = []
            cursor = ""
            while True:
                page = run("job.executions", "job_id=never", "limit=1000", *(["cursor=" + cursor] if cursor else []),
                           json_out=True)
                lag += [(e["updated_at_ms"] - gone[e["device_id"]]) / 1000.0 for e in page["executions"]
                        if e["state"] == "TIMED_OUT" and e["device_id"] in gone]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            lag.sort()
            result["never"] = {"s": round(took, 1), "timed_out": g["counts"]["TIMED_OUT"], "reboot_s": a.reboot_s,
                               "verdict_after_last_word_s": {"min": round(lag[0], 2), "p50": round(lag[len(lag) // 2], 2),
                                                             "max": round(lag[-1], 2)} if lag else None}
            ok = g["counts"]["TIMED_OUT"] == a.devices
        print(json.dumps(result))
        return 0 if ok else 1
    finally:
        if probe is not None:
            probe.stop = True
        local_broker.stop(d, agent, broker)


if __name__ == "__main__":
    sys.exit(main())
