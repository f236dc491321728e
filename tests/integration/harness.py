"""Starts the real fleetmq binary on a free port and gives tests real clients.

The broker is started with --listen=127.0.0.1:0 and the bound port is read
from its log line, so parallel runs never race for a port. Every wait is
bounded; a broker that does not start in 10 s fails the test.
"""
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

FLEETMQ = os.environ.get("FLEETMQ_BIN", os.path.join(os.path.dirname(__file__), "../../build/broker/fleetmq"))


# The worker a session is homed on with --workers N: the same hash as
# Cluster::HomeOf in broker/core/cluster.cc.
M = (1 << 64) - 1


def _fnv(h, s):
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001b3) & M
    return h


def _mix(h):
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & M
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & M
    h ^= h >> 33
    return h


def home(client_id, tenant="", workers=2):
    return _mix(_fnv(_fnv(0xcbf29ce484222325, tenant) ^ 0xff, client_id)) % workers


def id_on(worker, base, tenant=""):
    i = 0
    while True:
        cid = "%s-%d" % (base, i)
        if home(cid, tenant) == worker:
            return cid
        i += 1


class Broker:
    def __init__(self, *flags):
        self.data_dir = tempfile.mkdtemp(prefix="fleetmq-it-")
        self.log_path = os.path.join(self.data_dir, "broker.log")
        self.flags = list(flags)
        self.proc = None
        self.port = None

    def start(self):
        """Starts the broker; after the first start it reuses the same port
        (and data dir), so a restart looks like the same server coming back."""
        # Ready once "started" is logged: the signal handlers are installed
        # then (a SIGTERM before them would kill the broker outright).
        before = self.read_log().count(" started (data dir") if os.path.exists(self.log_path) else 0
        self.log = open(self.log_path, "a+")
        port = self.port or 0
        tls = [] if any(f.startswith("--tls_listen") for f in self.flags) else ["--tls_listen="]
        # Two workers unless a test says otherwise, whatever the machine's
        # CPU count: every suite then runs through the cross-worker paths
        # (hand-over to the session's home, forwarded messages).
        if not any(f.startswith("--workers") for f in self.flags):
            tls.append("--workers=2")
        flags = self.flags
        if getattr(self, "tls_port", None):  # a restart keeps the TLS port too (devices reconnect to it)
            flags = [("--tls_listen=127.0.0.1:%d" % self.tls_port if f == "--tls_listen=127.0.0.1:0" else f)
                     for f in flags]
        args = [FLEETMQ, "--listen=127.0.0.1:%d" % port, "--data_dir=" + self.data_dir, "--log_level=info"] + tls + flags
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            found = re.findall(r"listening for MQTT on 127\.0\.0\.1:(\d+)", self.read_log())
            if self.read_log().count(" started (data dir") > before and found:
                self.port = int(found[-1])
                tls = re.findall(r"listening for MQTT over mutual TLS on 127\.0\.0\.1:(\d+)", self.read_log())
                self.tls_port = int(tls[-1]) if tls else None
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("broker did not start: " + self.read_log())

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()

    def kill9_and_restart(self):
        """SIGKILL, then the same broker again. Fails when the broker had
        already exited by itself (a crash, or a sanitizer's exit) or reported
        anything before it was killed."""
        self.proc.kill()
        rc = self.proc.wait()
        self.log.close()
        self.check_log()
        if rc != -9:
            raise AssertionError("broker exited with %s before SIGKILL:\n%s" % (rc, self.read_log()[-4000:]))
        return self.start()

    SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")

    def check_log(self):
        log = self.read_log()
        for marker in self.SANITIZER_MARKERS:
            if marker in log:
                raise AssertionError("sanitizer report in broker log:\n" + log[-4000:])

    def stop(self, sig=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        """Stops the broker and fails if it did not exit cleanly or a
        sanitizer reported anything."""
        rc = self.stop()
        log = self.read_log()
        self.log.close()
        try:
            self.check_log()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if rc != 0:
            raise AssertionError("broker exited with %s:\n%s" % (rc, log[-4000:]))


class PahoClient:
    """A paho client running its network loop in a thread, collecting messages. Keep alive 15 s: under the
    broker's default Server Keep Alive (18 s), which paho-mqtt 1.6 does not follow."""

    def __init__(self, port, client_id="", v5=True, clean=True, keepalive=15, will=None,
                 session_expiry=None, connect_props=None, userdata=None):
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        if v5:
            self.c = mqtt.Client(client_id=client_id, protocol=proto)
        else:
            self.c = mqtt.Client(client_id=client_id, clean_session=clean, protocol=proto)
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.disconnects = queue.Queue()
        self.acks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        if v5:
            self.c.on_connect = lambda c, u, f, rc, p=None: self.connack.put((f, rc, p))
            self.c.on_disconnect = lambda c, u, rc, p=None: self.disconnects.put(rc)
        else:
            self.c.on_connect = lambda c, u, f, rc: self.connack.put((f, rc, None))
            self.c.on_disconnect = lambda c, u, rc: self.disconnects.put(rc)
        self.c.on_publish = lambda c, u, mid: self.acks.put(mid)
        if will:
            self.c.will_set(*will)
        props = connect_props
        if v5 and session_expiry is not None:
            props = props or Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        kwargs = {"keepalive": keepalive}
        if v5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = props
        self.c.connect("127.0.0.1", port, **kwargs)
        self.c.loop_start()
        self.flags, self.rc, self.props = self.connack.get(timeout=5)

    def subscribe(self, topic, qos=0, sub_id=None, **opts):
        """Subscribes and waits for the SUBACK; returns the granted codes.
        opts (v5): noLocal, retainAsPublished, retainHandling."""
        done = threading.Event()
        granted = []

        def on_sub(c, u, mid, g, p=None):
            granted.extend(g)
            done.set()

        self.c.on_subscribe = on_sub
        if self.v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions
            props = None
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **opts), properties=props)
        else:
            self.c.subscribe(topic, qos)
        assert done.wait(5), "no SUBACK"
        return granted

    def publish(self, topic, payload, qos=0, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos > 0:
            info.wait_for_publish(timeout=5)
            assert info.is_published(), "no PUBACK/PUBCOMP"
        return info

    def get(self, timeout=5):
        return self.messages.get(timeout=timeout)

    def get_all(self, n, timeout=5):
        out = []
        deadline = time.time() + timeout
        while len(out) < n:
            left = deadline - time.time()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def nothing(self, wait=0.3):
        try:
            m = self.messages.get(timeout=wait)
            return m
        except queue.Empty:
            return None

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drops the TCP connection without DISCONNECT (the will fires)."""
        self.c.loop_stop()
        self.c.socket().shutdown(socket.SHUT_RDWR)
        self.c.socket().close()


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def mqtt5_connect(client_id, keepalive=30):
    """CONNECT bytes, MQTT 5, clean start, no properties."""
    body = _str("MQTT") + bytes([5, 2]) + keepalive.to_bytes(2, "big") + b"\x00" + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def mqtt5_publish(topic, payload, qos=1, packet_id=1):
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + b"\x00" + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def mqtt5_subscribe(topic_filter, qos=1, packet_id=1):
    body = packet_id.to_bytes(2, "big") + b"\x00" + _str(topic_filter) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def pipelined_session(sock, client_id, tag):
    """CONNECT, SUBSCRIBE and a QoS 1 PUBLISH to the subscribed topic, all in
    one write (a connection handed to another worker must carry what came
    after its CONNECT); returns the packet types read back until both the
    PUBACK and the message itself came back, and the payload."""
    topic = "pipe/%s" % client_id
    sock.sendall(mqtt5_connect(client_id) + mqtt5_subscribe(topic, 1, 1) + mqtt5_publish(topic, tag, 1, 2))
    seen = []
    payload = None
    while payload is None or 0x40 not in seen or 0x90 not in seen:
        first, body = read_packet(sock)
        seen.append(first & 0xF0)
        if first & 0xF0 == 0x30:
            _, packet_id, payload = parse_publish(body)
            sock.sendall(b"\x40\x02" + packet_id)  # PUBACK
    return seen, payload


def parse_publish(body):
    """(topic, packet id bytes, payload) of an MQTT 5 QoS 1/2 PUBLISH body
    whose properties fit a one-byte length."""
    tlen = int.from_bytes(body[:2], "big")
    plen = body[4 + tlen]
    return body[2:2 + tlen].decode(), body[2 + tlen:4 + tlen], body[5 + tlen + plen:]


def read_packet(sock):
    """One MQTT packet from a blocking socket: (first byte, body)."""
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data
    first = exact(1)[0]
    n, shift = 0, 0
    while True:
        b = exact(1)[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, exact(n)


class PahoTls:
    """A paho client over mutual TLS with its loop in a thread: CONNACK code
    (an int; "no CONNACK" when none came), messages, SUBACK codes waited for."""

    def __init__(self, port, ca, cert, key, client_id, v5=True):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connack.put(rc.value if hasattr(rc, "value") else rc)
        self.c.on_subscribe = lambda c, u, mid, g, p=None: self.subacks.put([x.value if hasattr(x, "value") else x
                                                                             for x in g])
        self.c.connect("localhost", port, 30)
        self.c.loop_start()
        try:
            self.rc = self.connack.get(timeout=5)
        except queue.Empty:
            self.rc = "no CONNACK"

    def subscribe(self, *filters, qos=1):
        """Subscribes and returns the SUBACK's codes."""
        self.c.subscribe([(f, qos) for f in filters])
        return self.subacks.get(timeout=5)

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)
        return info

    def get(self, timeout=5):
        return self.messages.get(timeout=timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def sys_at_least(port, topic, want, timeout=8):
    """Polls a retained $SYS counter until it reaches `want`; returns the
    last value. With several workers $SYS shows the sum of reports made at
    each worker's own tick, so a fresh count can take two intervals."""
    deadline = time.time() + timeout
    while True:
        r = run_cli(["mosquitto_sub", "-p", str(port), "-t", topic, "-C", "1", "-W", "3"])
        value = int(r.stdout.strip() or 0)
        if value >= want or time.time() >= deadline:
            return value
        time.sleep(0.3)


class SubProcess:
    """mosquitto_sub started with -d and returned once its SUBACK arrived, so
    what is published next is known to reach it. lines() are its output
    without the debug lines."""

    def __init__(self, args, timeout=5):
        self.p = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d"] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.head = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            self.head.append(line)
            if "received SUBACK" in line:
                return
        self.p.kill()
        raise AssertionError("mosquitto_sub got no SUBACK:\n" + "".join(self.head))

    def lines(self, timeout=15):
        out, _ = self.p.communicate(timeout=timeout)
        return [l for l in (out or "").split("\n") if l and not l.startswith("Client ") and not l.startswith("Subscribed")]


def wait_for(cond, timeout=5, step=0.02):
    """Polls cond() until it is true or the bound passes; returns its last value."""
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v or time.time() >= deadline:
            return v
        time.sleep(step)


def run_cli(args, timeout=10, input=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)


class BrokerTest(unittest.TestCase):
    flags = ()

    def setUp(self):
        self.broker = Broker(*self.flags).start()
        self.port = self.broker.port
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            try:
                c.c.loop_stop()
                c.c.disconnect()
            except Exception:
                pass
        self.broker.close()

    def client(self, **kw):
        c = PahoClient(self.port, **kw)
        self.clients.append(c)
        return c


PKI = os.environ.get("FLEETMQ_PKI_BIN", os.path.join(os.path.dirname(FLEETMQ), "..", "tools", "fleetmq-pki"))


class TlsBase(unittest.TestCase):
    flags = ()

    def setUp(self):
        self.broker = Broker("--tls_listen=127.0.0.1:0", "--sys_interval=1", *self.flags).start()
        self.pki = os.path.join(self.broker.data_dir, "pki")
        self.tmp = tempfile.mkdtemp(prefix="fleetmq-tls-")
        self.assertIsNotNone(self.broker.tls_port)

    def tearDown(self):
        self.broker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def device(self, name, tenant="default"):
        key, csr, crt = (os.path.join(self.tmp, name + ext) for ext in (".key", ".csr", ".crt"))
        r = run_cli(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", key, "-subj", "/CN=%s/O=%s" % (name, tenant), "-out", csr])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_cli([PKI, "issue", "--dir", self.broker.data_dir, "--tenant", tenant, "--device", name, "--csr", csr])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(crt, "w") as f:
            f.write(r.stdout)
        return crt, key

    def paho(self, cert, key, client_id, v5=True):
        """A paho client over mutual TLS, connected (CONNACK asserted 0)."""
        c = PahoTls(self.broker.tls_port, os.path.join(self.pki, "root.crt"), cert, key, client_id, v5)
        self.addCleanup(c.close)
        self.assertEqual(c.rc, 0, "CONNACK %s" % c.rc)
        return c

    def raw_tls(self, crt, key):
        """A TLS connection whose handshake is complete and which has sent no
        MQTT byte yet."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(self.pki, "root.crt"))
        ctx.load_cert_chain(crt, key)
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.broker.tls_port), timeout=5),
                            server_hostname="localhost")
        s.do_handshake()
        return s

    def tls_args(self, cert, key):
        return ["-h", "localhost", "-p", str(self.broker.tls_port), "--cafile", os.path.join(self.pki, "root.crt"),
                "--cert", cert, "--key", key]
