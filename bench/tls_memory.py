#!/usr/bin/python3
"""Broker memory per mutual-TLS connection, fleetmq and mosquitto side by
side: --conns connections held (fleetmq-bench --scenario tlsmem), the
broker's resident set measured idle, then after each connection sent itself
one --size-byte message through the broker (one TLS record each way: 16 KiB
fills mbedTLS's and OpenSSL's record buffers), each after --settle seconds.

    bench/tls_memory.py --build build-rel [--conns 19900] [--size 16384] [--mosquitto]

Prints one JSON line per broker and a Markdown table. Loopback only, bounded;
the brokers are stopped at the end.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import reconnect_storm as rs


def run(args, kind):
    d = tempfile.mkdtemp(prefix="fmq-tlsmem-")
    broker = None
    try:
        pki = rs.make_pki(args, d)
        broker = rs.Broker(kind, args, d, pki).start()
        cmd = [os.path.join(args.build, "bench", "fleetmq-bench"), "--scenario", "tlsmem", "--port",
               str(broker.tls_port), "--conns", str(args.conns), "--window", "256", "--size", str(args.size),
               "--warmup", str(args.settle), "--duration", "300", "--broker-pid", str(broker.proc.pid),
               "--ca", pki["root"], "--cert", pki["client_crt"], "--key", pki["client_key"]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, preexec_fn=rs.raise_nofile)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        result["broker"] = kind
        return result
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True)
    ap.add_argument("--conns", type=int, default=19900)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--settle", type=float, default=12, help="seconds before each measurement")
    ap.add_argument("--mosquitto", action="store_true")
    ap.add_argument("--fleetmq-flag", action="append", default=[], help="an extra fleetmq option (repeatable)")
    args = ap.parse_args()
    rs.raise_nofile()
    rows = [run(args, k) for k in ["fleetmq"] + (["mosquitto"] if args.mosquitto else [])]
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    print("| broker | %d mutual-TLS connections: resident bytes per connection, idle | after one %d-byte message each"
          " way |" % (args.conns, args.size))
    print("|---|---|---|")
    for r in rows:
        print("| %s | %s | %s |" % (r["broker"], format(int(r["rss_per_conn_idle"]), ","),
                                    format(int(r["rss_per_conn_after_traffic"]), ",")))


if __name__ == "__main__":
    main()
