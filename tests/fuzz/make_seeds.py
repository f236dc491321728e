#!/usr/bin/env python3
"""Writes the fuzz seed corpus: every conformance vector from
tests/data/malformed.txt plus valid packets of every type, each prefixed
with the version byte the fuzz targets read first. Run from the repo root;
the output is committed."""
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "corpus")


def s(b):
    return struct.pack(">H", len(b)) + b


def vbi(n):
    out = b""
    while True:
        d = n & 0x7F
        n >>= 7
        if n:
            d |= 0x80
        out += bytes([d])
        if not n:
            return out


def pkt(first, body):
    return bytes([first]) + vbi(len(body)) + body


def valid(v5):
    props = (lambda p: vbi(len(p)) + p) if v5 else (lambda p: b"")
    connect = pkt(0x10, s(b"MQTT") + bytes([5 if v5 else 4, 0xEE, 0, 30]) +
                  props(b"\x11\x00\x00\x0e\x10" + b"\x21\x00\x0a" if v5 else b"") + s(b"dev-1") +
                  (props(b"\x18\x00\x00\x00\x05") if v5 else b"") + s(b"will/t") + s(b"bye") +
                  s(b"user") + s(b"pw"))
    sub = pkt(0x82, b"\x00\x01" + props(b"\x0b\x07" if v5 else b"") + s(b"a/+") + b"\x01" +
              s(b"$share/g/b/#") + b"\x02")
    pub0 = pkt(0x30, s(b"a/b") + props(b"\x23\x00\x01\x26" + s(b"k") + s(b"v") if v5 else b"") + b"hello")
    pub1 = pkt(0x32, s(b"a/b") + b"\x00\x02" + props(b"\x02\x00\x00\x00\x3c" if v5 else b"") + b"x")
    pub2 = pkt(0x34, s(b"a/b") + b"\x00\x03" + props(b"") + b"y")
    acks = pkt(0x40, b"\x00\x02") + pkt(0x50, b"\x00\x03") + pkt(0x62, b"\x00\x03") + pkt(0x70, b"\x00\x03")
    unsub = pkt(0xA2, b"\x00\x04" + props(b"") + s(b"a/+"))
    ping = pkt(0xC0, b"")
    disc = pkt(0xE0, b"\x04\x00" if v5 else b"")
    return [connect, connect + sub + pub0 + pub1 + pub2 + acks + unsub + ping + disc, sub, pub0]


def main():
    os.makedirs(OUT, exist_ok=True)
    n = 0
    with open(os.path.join(ROOT, "..", "data", "malformed.txt")) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            rule, ver = parts[0], int(parts[1])
            data = bytes.fromhex("".join(parts[3:]))
            name = "vec-%02d-%s" % (n, rule.replace("/", "_"))
            with open(os.path.join(OUT, name), "wb") as o:
                o.write(bytes([1 if ver == 5 else 0]) + data)
            n += 1
    for v5 in (False, True):
        for i, p in enumerate(valid(v5)):
            with open(os.path.join(OUT, "valid-v%d-%d" % (5 if v5 else 4, i)), "wb") as o:
                o.write(bytes([1 if v5 else 0]) + p)
            # The broker target reads the chunk size from bits 1..7.
            with open(os.path.join(OUT, "valid-v%d-%d-chunked" % (5 if v5 else 4, i)), "wb") as o:
                o.write(bytes([(1 if v5 else 0) | (3 << 1)]) + p)


if __name__ == "__main__":
    main()
