#!/usr/bin/env python3
"""fleetmq and mosquitto side by side: the same fleetmq-bench scenarios
against both brokers in one run, each repeated (default 3 times, a fresh
broker each time), medians and the ratio fleetmq/mosquitto in a Markdown
table on stdout (raw JSON lines of every run on stderr with --verbose).

Per core: both brokers pinned to CPU 0 (taskset), the generator to CPU 1;
fleetmq runs --workers 1. mosquitto is Debian's package with logging off and
TCP_NODELAY like fleetmq. Then, with --scaling, fleetmq --workers 2 against
--workers 1 with nothing pinned.

Loopback only; every run is bounded (fleetmq-bench stops itself; brokers are
killed at the end of each run).

  bench/compare.py --fleetmq build-rel/broker/fleetmq --bench build-rel/bench/fleetmq-bench \\
      [--pki-tool build-rel/tools/fleetmq-pki] [--runs 3] [--duration 4] [--scaling]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not listen on %d" % port)


class Broker:
    """One broker process on fresh ports and a fresh data dir."""

    def __init__(self, kind, args, pin, tls=False):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix="fmq-compare-")
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        taskset = ["taskset", "-c", pin] if pin else []
        if kind == "fleetmq":
            if tls:  # the shared PKI: same server certificate and CAs as mosquitto
                shutil.copytree(os.path.join(args.pki["dir"], "pki"), os.path.join(self.dir, "data", "pki"))
            cmd = taskset + [args.fleetmq, "--data_dir=" + self.dir + "/data", "--listen=127.0.0.1:%d" % self.port,
                             "--log_level=warning", "--storage.sync=none"]
            cmd.append("--tls_listen=127.0.0.1:%d" % self.tls_port if tls else "--tls_listen=")
            cmd += ["--tls_handshake_share=100", "--workers=%d" % args.workers_now]
        else:
            conf = os.path.join(self.dir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write("user root\nper_listener_settings false\nallow_anonymous true\nlog_type none\nlog_dest none\n"
                        "set_tcp_nodelay true\nmax_inflight_messages 100\npersistence false\n"
                        "listener %d 127.0.0.1\n" % self.port)
                if tls:
                    f.write("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n"
                            % (self.tls_port, args.pki["trust"], args.pki["server_crt"], args.pki["server_key"]))
            cmd = taskset + [MOSQUITTO, "-c", conf]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        if tls:
            wait_port(self.tls_port, self.proc)
        time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def scenarios(d, pki):
    """(name, bench args, metric, higher_is_better, cpu field, tls)"""
    common = ["--duration", str(d), "--warmup", "1"]
    out = [
        ("fan-in QoS 0, 4 pubs -> 1 sub (msg/s)", ["--pubs", "4", "--subs", "1", "--qos", "0", "--window", "100"] + common,
         "msgs_per_s", True, "broker_cpu_us_per_msg", False),
        ("fan-in QoS 1, 4 pubs -> 1 sub (msg/s)", ["--pubs", "4", "--subs", "1", "--qos", "1", "--window", "100"] + common,
         "msgs_per_s", True, "broker_cpu_us_per_msg", False),
        ("fan-out QoS 0, 1 pub -> 50 subs (deliveries/s)",
         ["--scenario", "fanout", "--subs", "50", "--qos", "0", "--window", "100"] + common,
         "msgs_per_s", True, "broker_cpu_us_per_msg", False),
        ("push QoS 1 to 19,900 devices (devices/s)", ["--scenario", "push", "--subs", "19900", "--window", "100"],
         "devices_per_s", True, "broker_cpu_us_per_device", False),
        ("fan-in QoS 0 at a fixed 50k msg/s: p99 latency (us)",
         ["--pubs", "4", "--subs", "1", "--qos", "0", "--rate", "50000", "--window", "5000"] + common,
         "p99_us", False, "broker_cpu_us_per_msg", False),
        ("19,800 idle connections: broker RSS per connection (bytes)",
         ["--scenario", "conn", "--conns", "19800", "--window", "200", "--duration", "1"],
         "broker_rss_per_conn", False, None, False),
    ]
    if pki:
        tls = ["--scenario", "tls", "--conns", "8", "--ca", pki["root"], "--cert", pki["client_crt"],
               "--key", pki["client_key"]] + common
        out += [
            ("mutual TLS, full handshakes (handshakes/s)", tls, "handshakes_per_s", True,
             "broker_cpu_us_per_handshake", True),
            ("mutual TLS, resumed with a ticket (handshakes/s)", tls + ["--resume"], "handshakes_per_s", True,
             "broker_cpu_us_per_handshake", True),
        ]
    return out


def run_once(args, kind, bench_args, tls, broker_pin, gen_pin):
    b = Broker(kind, args, broker_pin, tls=tls)
    try:
        port = b.tls_port if tls else b.port
        cmd = (["taskset", "-c", gen_pin] if gen_pin else []) + [args.bench, "--port", str(port),
                                                                 "--broker-pid", str(b.proc.pid)] + bench_args
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if r.returncode != 0 or not line.startswith("{"):
            raise RuntimeError("%s: %s failed: %s" % (kind, " ".join(bench_args[:4]), r.stderr[-500:]))
        res = json.loads(line)
        if args.verbose:
            print(kind, json.dumps(res), file=sys.stderr)
        return res
    finally:
        b.close()


def make_pki(args, tmp):
    """A PKI from fleetmq-pki: root, tenant CA, server and operator certs;
    both brokers serve the same server certificate and trust the same CAs."""
    d = os.path.join(tmp, "pki-data")
    subprocess.run([args.pki_tool, "init", "--dir", d], check=True, capture_output=True)
    p = os.path.join(d, "pki")
    trust = os.path.join(tmp, "trust.pem")
    with open(trust, "w") as f:
        for name in (os.path.join(p, "root.crt"), os.path.join(p, "tenants", "default", "ca.crt")):
            f.write(open(name).read())
    return {"dir": d, "root": os.path.join(p, "root.crt"), "trust": trust,
            "server_crt": os.path.join(p, "server.crt"), "server_key": os.path.join(p, "server.key"),
            "client_crt": os.path.join(p, "operator.crt"), "client_key": os.path.join(p, "operator.key")}


def fmt(v):
    return "%s" % format(int(round(v)), ",") if v >= 100 else "%.2f" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleetmq", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--pki-tool", help="fleetmq-pki: adds the mutual-TLS scenarios")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--only", help="run scenarios whose name contains this")
    ap.add_argument("--scaling", action="store_true", help="also fleetmq --workers 2 vs 1, unpinned")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fmq-compare-pki-")
    try:
        args.pki = make_pki(args, tmp) if args.pki_tool else None
        # The broker fd limit of this machine (20,000) bounds the connection scenarios.
        rows = []
        args.workers_now = 1
        for name, bench_args, metric, higher, cpu_field, tls in scenarios(args.duration, args.pki):
            if args.only and args.only not in name:
                continue
            res = {"fleetmq": [], "mosquitto": []}
            for _ in range(args.runs):
                for kind in ("fleetmq", "mosquitto"):  # interleaved: both see the same machine
                    res[kind].append(run_once(args, kind, bench_args, tls, "0", "1"))
            med = {k: statistics.median(r[metric] for r in v) for k, v in res.items()}
            cpu = {k: (statistics.median(r[cpu_field] for r in v) if cpu_field else None) for k, v in res.items()}
            ratio = med["fleetmq"] / med["mosquitto"] if med["mosquitto"] else float("inf")
            rows.append((name, med, cpu, ratio, higher))
            print("done: %s" % name, file=sys.stderr)
        print("| scenario (median of %d) | fleetmq | mosquitto | fleetmq/mosquitto | broker CPU µs per unit, fleetmq / mosquitto |"
              % args.runs)
        print("|---|---|---|---|---|")
        for name, med, cpu, ratio, higher in rows:
            c = "%.2f / %.2f" % (cpu["fleetmq"], cpu["mosquitto"]) if cpu["fleetmq"] is not None else "—"
            print("| %s | %s | %s | %.2f× %s | %s |" % (name, fmt(med["fleetmq"]), fmt(med["mosquitto"]), ratio,
                                                     "(higher is better)" if higher else "(lower is better)", c))
        if args.scaling:
            print()
            print("| fleetmq, nothing pinned (median of %d) | --workers 1 | --workers 2 | 2 / 1 | broker CPU µs per unit, 1 / 2 |"
                  % args.runs)
            print("|---|---|---|---|---|")
            for name, bench_args, metric, _, cpu_field, tls in scenarios(args.duration, None)[:4]:
                med, cpu = {}, {}
                for w in (1, 2):
                    args.workers_now = w
                    runs = [run_once(args, "fleetmq", bench_args, tls, None, None) for _ in range(args.runs)]
                    med[w] = statistics.median(r[metric] for r in runs)
                    cpu[w] = statistics.median(r[cpu_field] for r in runs)
                print("| %s | %s | %s | %.2f× | %.2f / %.2f |" % (name, fmt(med[1]), fmt(med[2]), med[2] / med[1],
                                                                cpu[1], cpu[2]))
                print("done: scaling %s" % name, file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
