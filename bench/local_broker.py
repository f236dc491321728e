"""What the real-broker benches share: a fleetmq on loopback with a fresh
data dir (plain and mutual-TLS listeners on free ports), started and waited
for, and its CPU time."""
import json
import os
import re
import shutil
import signal
import subprocess
import time


def start(build, d, *flags):
    """Starts BUILD/broker/fleetmq on DIR/data; returns (process, plain port, TLS port)."""
    path = os.path.join(d, "broker.log")
    log = open(path, "w")
    p = subprocess.Popen([build + "/broker/fleetmq", "--data_dir", d + "/data", "--listen", "127.0.0.1:0",
                          "--tls_listen", "127.0.0.1:0", "--log_level", "info"] + list(flags),
                         stdout=log, stderr=subprocess.STDOUT)
    text = ""
    for _ in range(300):
        time.sleep(0.05)
        text = open(path).read()
        if " started (data dir" in text:
            break
    port = int(re.findall(r"listening for MQTT on 127\.0\.0\.1:(\d+)", text)[0])
    tls = int(re.findall(r"listening for MQTT over mutual TLS on 127\.0\.0\.1:(\d+)", text)[0])
    return p, port, tls


def sys_value(port, topic):
    """One $SYS counter of the broker on the plain port (0 when not published)."""
    r = subprocess.run(["mosquitto_sub", "-p", str(port), "-t", topic, "-C", "1", "-W", "5"], capture_output=True,
                       text=True)
    return int(r.stdout.strip() or 0)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(d, *procs):
    """SIGTERM each process still running (SIGKILL after 30 s), then removes DIR."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    shutil.rmtree(d, ignore_errors=True)


def register_fleet(build, d, admin, n, phases, groups=()):
    """Certificates for devices d0..d<n-1> in DIR/certs (fleetmq-pki devices) and
    their registration (model m, in `groups`), 100 per request; times both
    into `phases`."""
    t0 = time.time()
    subprocess.run([build + "/tools/fleetmq-pki", "devices", "--dir", d + "/data", "--tenant", "default", "--prefix",
                    "d", "--count", str(n), "--out", d + "/certs"], check=True)
    phases["certificates_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    for i in range(0, n, 100):
        cmds = [{"command": "device.register", "device_id": "d%d" % k, "serial_number": "s%d" % k, "model_id": "m"}
                for k in range(i, min(n, i + 100))]
        if groups:
            for c in cmds:
                c["group_ids"] = list(groups)
        subprocess.run(admin + ["--raw", json.dumps({"commands": cmds})], check=True, capture_output=True)
    phases["register_s"] = round(time.time() - t0, 1)
