#!/usr/bin/env python3
"""Sums the test cases of every meson test log given (doctest cases,
unittest tests, one per fuzz replay) and prints one line: 'N passed,
N failed'. A suite that failed without reporting a failed case (a crash, a
timeout, a sanitizer report) counts as one failure. Exits non-zero when
anything failed or nothing ran."""
import json
import re
import sys


def counts(out, ok):
    m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", out)
    if m:
        return int(m.group(2)), int(m.group(3))
    u = re.search(r"Ran (\d+) tests?", out)
    if u:
        bad = sum(int(x) for x in re.findall(r"(?:failures|errors)=(\d+)", out))
        return int(u.group(1)) - bad, bad
    return (1, 0) if ok else (0, 1)


passed = failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            t = json.loads(line)
            ok = t.get("result") == "OK"
            p, fl = counts((t.get("stdout") or "") + (t.get("stderr") or ""), ok)
            if not ok and fl == 0:
                fl = 1
            passed += p
            failed += fl
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed or passed == 0 else 0)
