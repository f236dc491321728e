#!/usr/bin/env python3
"""Device health reports from N real devices (doc/health.md): a broker on
loopback, N fleetmq-device simulated devices over mutual TLS (one socket
each: N up to ~19,900 under the 20,000-file limit) reporting on
health/report every --every seconds. After everyone connected and a warm-up,
it measures over --seconds: reports kept per second, broker CPU per report,
bytes written to the health column family per report (the broker's own
counter) and the data dir's growth, and the round trip of health.get and of
a 60-minute health.history while the reports flow.

  bench/health_devices.py --build build [--devices 19900] [--every 1] [--seconds 60] [--workers 2]

Setup (certificates, registration, connecting) is timed separately. Loopback
only; everything is stopped at the end."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import local_broker



def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--devices", type=int, default=19900)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="fleetmq-health-")
    broker = agent = None
    phases = {}
    try:
        broker, port, tls = local_broker.start(b, d, "--workers", str(a.workers), "--sys_interval", "1")
        admin = [b + "/tools/fleetmq-admin", "--data_dir", d + "/data", "--timeout", "60", "--port", str(tls)]

        def run(*args):
            r = subprocess.run(admin + ["--json"] + list(args), check=True, capture_output=True, text=True)
            return json.loads(r.stdout)["data"]
        run("model.create", "model_id=m", "manufacturer=bench")
        local_broker.register_fleet(b, d, admin, a.devices, phases)
        t0 = time.time()
        agent = subprocess.Popen([b + "/tools/fleetmq-device", "--port", str(tls), "--ca", d + "/data/pki/root.crt",
                                  "--certs", d + "/certs", "--prefix", "d", "--count", str(a.devices), "--window",
                                  "256", "--health-s", str(a.every)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while local_broker.sys_value(port, "$SYS/broker/clients/connected") < a.devices:
            if agent.poll() is not None or time.time() - t0 > 1800:
                print("devices did not connect", file=sys.stderr)
                return 1
            time.sleep(1)
        phases["connect_s"] = round(time.time() - t0, 1)
        time.sleep(max(5.0, 2 * a.every))  # every device past its first (randomly placed) report
        rep0 = local_broker.sys_value(port, "$SYS/broker/management/health/reports")
        bytes0 = local_broker.sys_value(port, "$SYS/broker/management/health/bytes_written")
        lim0 = local_broker.sys_value(port, "$SYS/broker/management/health/rate_limited")
        cpu0, disk0, t0 = local_broker.cpu_seconds(broker.pid), du(d + "/data"), time.time()
        gets, hist = [], []
        while time.time() - t0 < a.seconds:
            s = time.time()
            run("health.get", "device_id=d%d" % (len(gets) % a.devices))
            gets.append((time.time() - s) * 1000)
            s = time.time()
            run("health.history", "device_id=d%d" % (len(hist) % a.devices), "from_ms=%d" %
                int((time.time() - 3600) * 1000))
            hist.append((time.time() - s) * 1000)
            time.sleep(1)
        took = time.time() - t0
        time.sleep(1.5)  # the counters are published each second
        reports = local_broker.sys_value(port, "$SYS/broker/management/health/reports") - rep0
        written = local_broker.sys_value(port, "$SYS/broker/management/health/bytes_written") - bytes0
        cpu = local_broker.cpu_seconds(broker.pid) - cpu0
        grown = du(d + "/data") - disk0
        gets.sort()
        hist.sort()
        per_report = written / reports if reports else 0
        result = {"devices": a.devices, "every_s": a.every, "workers": a.workers, "setup": phases,
                  "window_s": round(took, 1), "reports": reports, "reports_per_s": round(reports / took, 1),
                  "rate_limited": local_broker.sys_value(port, "$SYS/broker/management/health/rate_limited") - lim0,
                  "broker_cpu_s": round(cpu, 1),
                  "broker_cpu_us_per_report": round(cpu * 1e6 / reports, 1) if reports else None,
                  "bytes_written_per_report": round(per_report),
                  "written_per_device_per_day_mb_at_1_per_min": round(per_report * 1440 / 1e6, 2),
                  "data_dir_growth_mb": round(grown / 1e6, 1),
                  "health_get_ms": {"p50": round(gets[len(gets) // 2], 1), "max": round(gets[-1], 1)},
                  "health_history_ms": {"p50": round(hist[len(hist) // 2], 1), "max": round(hist[-1], 1)}}
        print(json.dumps(result))
        return 0
    finally:
        local_broker.stop(d, agent, broker)


if __name__ == "__main__":
    sys.exit(main())
