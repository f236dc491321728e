#!/usr/bin/python3
"""A fleet coming back after its broker is killed: --conns mutual-TLS devices
connected (fleetmq-bench --scenario storm), the broker killed with SIGKILL
and started again on the same ports and data dir, and the time until every
device has its CONNACK again. Each broker twice: the devices offering the
session tickets they got before the kill (--resume), and doing full
handshakes. fleetmq keeps its ticket keys in the data dir; mosquitto
(Debian's, OpenSSL) keeps them in memory, so its tickets die with it.

    bench/reconnect_storm.py --build build-rel [--conns 19900] [--window 256] [--mosquitto]

Prints one JSON line per run and a Markdown table. Loopback only; every
phase is bounded (--duration seconds), and the brokers are stopped at the
end. Needs about 2 x --conns file descriptors under the 20,000 per-process
limit: the bench holds one per device, each broker one per device.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from compare import MOSQUITTO, free_port, wait_port


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    """fleetmq or mosquitto on fixed ports, restartable on the same ports and data."""

    def __init__(self, kind, args, d, pki):
        self.kind, self.args, self.d, self.pki = kind, args, d, pki
        self.port, self.tls_port = free_port(), free_port()
        self.proc = None
        if kind == "mosquitto":
            self.conf = os.path.join(d, "mosquitto.conf")
            with open(self.conf, "w") as f:
                f.write("user root\nper_listener_settings false\nallow_anonymous true\nlog_type none\n"
                        "log_dest none\nset_tcp_nodelay true\npersistence false\n"
                        "listener %d 127.0.0.1\nlistener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
                        "require_certificate true\n"
                        % (self.port, self.tls_port, pki["trust"], pki["server_crt"], pki["server_key"]))

    def start(self):
        if self.kind == "fleetmq":
            cmd = [os.path.join(self.args.build, "broker", "fleetmq"), "--data_dir=" + os.path.join(self.d, "data"),
                   "--listen=127.0.0.1:%d" % self.port, "--tls_listen=127.0.0.1:%d" % self.tls_port,
                   "--log_level=warning"] + self.args.fleetmq_flag
        else:
            cmd = [MOSQUITTO, "-c", self.conf]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=raise_nofile)
        self.started = time.time()
        wait_port(self.tls_port, self.proc)
        return self

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_pki(args, d):
    """fleetmq-pki's PKI in DIR/data/pki (the fleetmq run uses it as its own);
    mosquitto serves the same server certificate and trusts the same CAs."""
    data = os.path.join(d, "data")
    subprocess.run([os.path.join(args.build, "tools", "fleetmq-pki"), "init", "--dir", data], check=True,
                   capture_output=True)
    p = os.path.join(data, "pki")
    trust = os.path.join(d, "trust.pem")
    with open(trust, "w") as f:
        for name in (os.path.join(p, "root.crt"), os.path.join(p, "tenants", "default", "ca.crt")):
            f.write(open(name).read())
    return {"root": os.path.join(p, "root.crt"), "trust": trust, "server_crt": os.path.join(p, "server.crt"),
            "server_key": os.path.join(p, "server.key"), "client_crt": os.path.join(p, "operator.crt"),
            "client_key": os.path.join(p, "operator.key")}


def run(args, kind, resume):
    d = tempfile.mkdtemp(prefix="fmq-storm-")
    broker = None
    bench = None
    try:
        pki = make_pki(args, d)
        broker = Broker(kind, args, d, pki).start()
        cmd = [os.path.join(args.build, "bench", "fleetmq-bench"), "--scenario", "storm", "--port",
               str(broker.tls_port), "--conns", str(args.conns), "--window", str(args.window), "--duration",
               str(args.duration), "--ca", pki["root"], "--cert", pki["client_crt"], "--key", pki["client_key"]]
        if resume:
            cmd.append("--resume")
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 preexec_fn=raise_nofile)
        line = bench.stdout.readline()
        if not line.startswith("held "):
            raise RuntimeError("%s: the bench did not hold its connections: %r" % (kind, line))
        cpu_before = cpu_seconds(broker.proc.pid)
        broker.kill9()
        killed = time.time()
        broker.start()
        listening = time.time() - killed
        result = json.loads(bench.stdout.readline())
        bench.wait(timeout=30)
        result.update({"broker": kind, "restart_to_listening_s": round(listening, 3),
                       "broker_cpu_s_after_restart": round(cpu_seconds(broker.proc.pid), 2),
                       "broker_cpu_s_holding": round(cpu_before, 2)})
        return result
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        if broker is not None:
            broker.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="meson build dir (broker/fleetmq, bench/fleetmq-bench, tools/)")
    ap.add_argument("--conns", type=int, default=19900)
    ap.add_argument("--window", type=int, default=256, help="connects/handshakes in progress at once")
    ap.add_argument("--duration", type=float, default=400, help="bound of each phase, seconds")
    ap.add_argument("--mosquitto", action="store_true", help="also Debian's mosquitto, side by side")
    ap.add_argument("--only-resume", action="store_true", help="skip the full-handshake runs")
    ap.add_argument("--fleetmq-flag", action="append", default=[], help="an extra fleetmq option (repeatable)")
    args = ap.parse_args()
    raise_nofile()
    kinds = ["fleetmq"] + (["mosquitto"] if args.mosquitto else [])
    rows = []
    for kind in kinds:
        for resume in ([True] if args.only_resume else [True, False]):
            r = run(args, kind, resume)
            print(json.dumps(r), file=sys.stderr)
            rows.append(r)
    print("| broker | devices offer their tickets | back (of %d) | seconds from the kill | reconnects/s from the"
          " first accept | broker CPU s after restart |" % args.conns)
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %s | %d | %.2f | %s | %.1f |" % (
            r["broker"], "yes" if r["resume"] else "no (full handshakes)", r["back"], r["seconds_from_drop"],
            format(int(r["reconnects_per_s"]), ","), r["broker_cpu_s_after_restart"]))


if __name__ == "__main__":
    main()
