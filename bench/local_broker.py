"""What the real-broker benches share: a fleetmq on loopback with a fresh
data dir (plain and mutual-TLS listeners on free ports), started and waited
for, and its CPU time."""
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
