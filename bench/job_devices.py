#!/usr/bin/env python3
"""A command job, or a configuration push (--config-kb), over N real devices: a broker
on loopback, N fleetmq-device simulated devices over mutual TLS (each its own
certificate, one socket each: N up to ~19,900 under the 20,000-file limit),
one job over their group created with fleetmq-admin. Reports the time from
job.create (or config.set group_id=all with a document of about KB KiB:
each device applies it and reports APPLIED with its hash) until every
execution is SUCCEEDED and stored (job.get says COMPLETED), devices/s, and
the broker's CPU time per device during the job.

  bench/job_devices.py --build build [--devices 19900] [--workers 2] [--in-progress] [--config-kb 5]

Setup (certificates, registration, connecting) is timed separately. Loopback
only; everything is stopped at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import local_broker


cpu_seconds = local_broker.cpu_seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--devices", type=int, default=19900)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--in-progress", action="store_true", help="devices report IN_PROGRESS before SUCCEEDED")
    ap.add_argument("--config-kb", type=int, default=0,
                    help="configuration pushes instead of a command: a whole document of this size, then a change")
    ap.add_argument("--max-in-flight", type=int, default=0, help="the job's rollout.max_in_flight (default: the engine's)")
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    d = tempfile.mkdtemp(prefix="fleetmq-jobdev-")
    broker = agent = None
    phases = {}
    try:
        broker, port, tls = local_broker.start(b, d, "--workers", str(a.workers), "--sys_interval", "1")
        admin = [b + "/tools/fleetmq-admin", "--data_dir", d + "/data", "--timeout", "60"]
        subprocess.run(admin + ["--port", str(tls), "model.create", "model_id=m", "manufacturer=bench"], check=True,
                       capture_output=True)
        admin += ["--port", str(tls)]
        subprocess.run(admin + ["group.create", "group_id=all", "name=all"], check=True, capture_output=True)
        local_broker.register_fleet(b, d, admin, a.devices, phases, groups=("all",))
        t0 = time.time()
        agent = subprocess.Popen([b + "/tools/fleetmq-device", "--port", str(tls), "--ca", d + "/data/pki/root.crt",
                                  "--certs", d + "/certs", "--prefix", "d", "--count", str(a.devices), "--window",
                                  str(a.window)] + ([] if a.in_progress else ["--no-progress"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
        time.sleep(3)  # connectivity events and their audit settle
        rollout = ['rollout={"max_in_flight":%d}' % a.max_in_flight] if a.max_in_flight else []

        def timed(job_id, cmd):
            cpu0 = cpu_seconds(broker.pid)
            t0 = time.time()
            subprocess.run(admin + cmd + ["job_id=" + job_id] + rollout, check=True, capture_output=True)
            # One connection following the job's events (polling job.get would
            # add a TLS handshake per poll to the broker's CPU).
            w = subprocess.run(admin + ["--json", "job.watch", "job_id=" + job_id], capture_output=True, text=True)
            took = time.time() - t0
            g = json.loads(w.stdout.strip().splitlines()[-1])
            cpu = cpu_seconds(broker.pid) - cpu0
            return {"job_s": round(took, 2), "devices_per_s": round(a.devices / took), "broker_cpu_s": round(cpu, 2),
                    "broker_cpu_us_per_device": round(cpu / a.devices * 1e6, 1), "status": g["status"],
                    "succeeded": g["counts"]["SUCCEEDED"]}
        runs = {}
        if a.config_kb:
            doc = {"mode": "eco", "calibration": {"c%d" % i: i * 0.25 for i in range(a.config_kb * 1024 // 14)}}
            runs["whole_document"] = timed("bench", ["config.set", "group_id=all", "document=" + json.dumps(doc)])
            runs["change"] = timed("bench2", ["config.set", "group_id=all", 'patch={"mode":"sport"}'])
        else:
            runs["command"] = timed("bench", ["job.create", 'document={"command":"reboot"}', "group_id=all"])
        result = {"devices": a.devices, "workers": a.workers, "in_progress": a.in_progress, "config_kb": a.config_kb,
                  "max_in_flight": a.max_in_flight, "runs": runs, "setup": phases}
        print(json.dumps(result))
        return 0 if all(r["succeeded"] == a.devices for r in runs.values()) else 1
    finally:
        local_broker.stop(d, agent, broker)


if __name__ == "__main__":
    sys.exit(main())
