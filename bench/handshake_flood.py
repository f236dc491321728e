#!/usr/bin/python3
"""Handshake flood against fleetmq's TLS listener while fleetmq-bench measures
established (plain TCP) traffic: does a flood of TLS handshakes starve
connections that are already up?

    bench/handshake_flood.py --broker build/broker/fleetmq --bench build/bench/fleetmq-bench \
        --pki-tool build/tools/fleetmq-pki [--procs 4] [--seconds 5]

Starts its own broker in a temporary data dir (broker on CPU 0, load on CPU 1),
runs `fleetmq-bench fanin` once alone and once during a flood of `--procs`
processes doing full mutual-TLS handshakes in a loop (a valid device
certificate, so every handshake costs the broker its full ECDSA work), and
prints one JSON line with both runs and the handshakes per second achieved.
Loopback only; bounded by --seconds.
"""
import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time


def flood(port, ca, crt, key, stop_at, counter):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(crt, key)
    ctx.check_hostname = False
    n = 0
    while time.time() < stop_at:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    t.do_handshake()
                    n += 1
        except OSError:
            time.sleep(0.001)
    with counter.get_lock():
        counter.value += n


def bench(args, port):
    out = subprocess.run(["taskset", "-c", "1", args.bench, "--scenario", "fanin", "--port", str(port), "--pubs", "4", "--subs", "1",
                          "--qos", "1", "--window", "100", "--duration", str(args.seconds)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=args.seconds + 30)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--pki-tool", required=True)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--share", type=int, default=50, help="the broker's tls_handshake_share")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="fleetmq-flood-")
    log = open(os.path.join(data, "broker.log"), "w+")
    broker = subprocess.Popen(["taskset", "-c", "0", args.broker, "--data_dir=" + data, "--listen=127.0.0.1:0",
                               "--tls_listen=127.0.0.1:0", "--log_level=warning",
                               "--tls_handshake_share=%d" % args.share], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        ports = None
        while time.time() < deadline:
            # The ports are logged at info; ask the OS instead.
            out = subprocess.run(["ss", "-ltnpH"], stdout=subprocess.PIPE, text=True).stdout
            found = sorted(int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)\s.*pid=%d," % broker.pid, out))
            if len(found) == 2:
                ports = found
                break
            time.sleep(0.1)
        if ports is None:
            raise SystemExit("broker did not start")
        # Which is which: the TLS port answers a TLS ClientHello.
        plain, tls = ports
        pki = os.path.join(data, "pki")
        key = os.path.join(data, "flood.key")
        csr = os.path.join(data, "flood.csr")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-subj", "/CN=flood", "-out", csr], check=True, capture_output=True)
        crt = os.path.join(data, "flood.crt")
        with open(crt, "w") as f:
            f.write(subprocess.run([args.pki_tool, "issue", "--dir", data, "--tenant", "default", "--device", "flood",
                                    "--csr", csr], check=True, stdout=subprocess.PIPE, text=True).stdout)
        try:
            socket.create_connection(("127.0.0.1", tls)).close()
        except OSError:
            plain, tls = tls, plain
        alone = bench(args, plain)
        counter = multiprocessing.Value("l", 0)
        stop_at = time.time() + args.seconds + 2
        procs = [multiprocessing.Process(target=flood, args=(tls, os.path.join(pki, "root.crt"), crt, key, stop_at, counter))
                 for _ in range(args.procs)]
        for p in procs:
            p.start()
            os.sched_setaffinity(p.pid, {1})  # the load side's CPU
        time.sleep(1)
        during = bench(args, plain)
        for p in procs:
            p.join()
        print(json.dumps({"alone": alone, "during_flood": during,
                          "flood_handshakes_per_s": round(counter.value / (args.seconds + 2), 1),
                          "throughput_ratio": round(during.get("msgs_per_s", 0) / max(1, alone.get("msgs_per_s", 1)), 3)}))
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
