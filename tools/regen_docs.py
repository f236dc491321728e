#!/usr/bin/env python3
"""Regenerates the generated parts of the docs from the binaries' tables:
the options table in doc/configuration.md (fleetmq --help-markdown) and the
command section of doc/admin-api.md (fleetmq-admin --help-markdown). Unit
tests fail until this is run after a change to either table.
Usage: tools/regen_docs.py [BUILD_DIR]"""
import os
import subprocess
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "build")


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


# The command section, between its markers.
path = os.path.join(root, "doc", "admin-api.md")
doc = open(path).read()
begin, end = "<!-- commands:begin -->\n", "<!-- commands:end -->"
b, e = doc.index(begin) + len(begin), doc.index(end)
doc = doc[:b] + run(os.path.join(build, "tools", "fleetmq-admin"), "--help-markdown") + doc[e:]
open(path, "w").write(doc)

# The options table: the first table of configuration.md, replaced whole.
path = os.path.join(root, "doc", "configuration.md")
lines = open(path).read().split("\n")
start = next(i for i, l in enumerate(lines) if l.startswith("| key |"))
stop = start
while stop < len(lines) and lines[stop].startswith("|"):
    stop += 1
lines[start:stop] = run(os.path.join(build, "broker", "fleetmq"), "--help-markdown").rstrip("\n").split("\n")
open(path, "w").write("\n".join(lines))
