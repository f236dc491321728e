#!/usr/bin/env python3
"""kill -9 at random moments during a job, N cycles (issue 11's crash
measurement). Each cycle: fleetmq-job-bench runs a new command job over
--devices simulated devices on RocksDB in a fresh directory and is killed
(SIGKILL) at a random moment, half the time again while resuming; a last run
resumes it to the end and --verify checks that the job COMPLETED with every
execution SUCCEEDED at attempt 1: nothing acknowledged was forgotten and no
device saw an attempt it could not recognise.

  bench/job_crash.py --bin build/bench/fleetmq-job-bench [--devices 100000] [--cycles 10] [--seed 1]
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--devices", type=int, default=100000)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    cycles = []
    for c in range(a.cycles):
        d = tempfile.mkdtemp(prefix="fleetmq-jobcrash-")
        try:
            # A new job, killed at a random moment; half the time killed again
            # while resuming; then resumed to the end and verified.
            kills = [rnd.randint(50, 2000)] + ([rnd.randint(50, 1500)] if rnd.random() < 0.5 else [])
            rcs = []
            for k, ms in enumerate(kills):
                args = [a.bin, "--dir", d, "--devices", str(a.devices), "--crash-after-ms", str(ms)]
                r = subprocess.run(args + (["--resume"] if k else []), capture_output=True, text=True, timeout=600)
                rcs.append(r.returncode)
                if r.returncode not in (-9, 0):
                    print("cycle %d failed: rc %d\n%s" % (c, r.returncode, r.stderr), file=sys.stderr)
                    return 1
            t0 = time.time()
            r = subprocess.run([a.bin, "--dir", d, "--devices", str(a.devices), "--resume"], capture_output=True,
                               text=True, timeout=600)
            resume_s = time.time() - t0
            if r.returncode != 0:
                print("cycle %d: resume failed: %s" % (c, r.stderr), file=sys.stderr)
                return 1
            v = subprocess.run([a.bin, "--dir", d, "--devices", str(a.devices), "--verify"], capture_output=True,
                               text=True, timeout=600)
            verdict = json.loads(v.stdout.strip() or "{}")
            cycles.append({"cycle": c, "killed_after_ms": kills, "rc": rcs, "resume_s": round(resume_s, 2),
                           "succeeded": verdict.get("succeeded"), "ok": v.returncode == 0})
            if v.returncode != 0:
                print(json.dumps(cycles), file=sys.stderr)
                return 1
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"devices": a.devices, "cycles": cycles,
                      "killed": sum(1 for c in cycles for rc in c["rc"] if rc == -9),
                      "ok": all(c["ok"] for c in cycles)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
