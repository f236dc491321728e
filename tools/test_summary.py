#!/usr/bin/env python3
"""Sums the test cases of every meson test log given (doctest cases,
unittest tests, one per fuzz replay input) and prints one line:
'N passed, N failed, N skipped'.

A green line must mean the suite ran. So, besides failed cases, these fail
the run, each with a line naming the suite:
- a suite that failed without reporting a failed case (a crash, a timeout,
  a sanitizer report) counts as one failure;
- an expected suite (EXPECTED below) missing from its log, or one that ran
  fewer cases than its floor (a suite that silently ran nothing, e.g.
  unittest's "Ran 0 tests", which exits 0);
- a skipped case or suite, unless its suite is named in FMQ_ALLOWED_SKIPS
  (comma-separated; tools/dev.sh sets it only for what cannot run as a
  non-root user).
Exits non-zero when any of these happened or nothing ran."""
import json
import os
import re
import sys

# Suites each build directory must run, with the fewest cases each may
# report: today's counts (raise them with the tests). A suite that loses
# tests, or runs none, fails here.
ALL = {
    "unit": 214,
    "fuzz-replay-codec": 50, "fuzz-replay-broker": 50, "fuzz-replay-records": 14,
    "fuzz-replay-csr": 3, "fuzz-replay-admin": 16, "fuzz-replay-config": 7, "fuzz-replay-ota": 10, "fuzz-replay-health": 11,
    "fuzz-replay-renewal": 12, "fuzz-replay-tls": 6,
    "integration": 22, "integration-persistence": 4, "integration-disk-full": 1,
    "integration-pki": 4, "integration-tls": 11, "integration-admin": 23, "integration-workers": 9,
    "integration-jobs": 13, "integration-config": 9, "integration-ota": 11, "integration-health": 5,
    "integration-renewal": 4,
}
EXPECTED = {"build": dict(ALL, format=100, cppcheck=1), "build-asan": ALL,
            "build-tsan": {k: ALL[k] for k in ("integration-workers", "integration-tls", "integration-admin",
                                                         "integration-jobs", "integration-config", "integration-ota",
                                                         "integration-health", "integration-renewal")}}


def counts(out, ok):
    """(passed, failed, skipped) as the suite's own runner reported them."""
    m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed \|\s*(\d+) skipped", out)
    if m:
        return int(m.group(2)), int(m.group(3)), int(m.group(4))
    u = re.search(r"Ran (\d+) tests?", out)
    if u:
        bad = sum(int(x) for x in re.findall(r"(?:failures|errors)=(\d+)", out))
        skipped = sum(int(x) for x in re.findall(r"skipped=(\d+)", out))
        return int(u.group(1)) - bad - skipped, bad, skipped
    p = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    if p:
        return int(p.group(1)), int(p.group(2)), 0
    r = re.search(r"replayed (\d+) inputs", out)
    if r:
        return (int(r.group(1)), 0, 0) if ok else (0, 1, 0)
    return (1, 0, 0) if ok else (0, 1, 0)


def main(paths):
    allowed = {s for s in os.environ.get("FMQ_ALLOWED_SKIPS", "").split(",") if s}
    passed = failed = skipped = 0
    problems = []
    for path in paths:
        build = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        seen = {}
        with open(path) as f:
            for line in f:
                t = json.loads(line)
                name = t.get("name", "?")
                result = t.get("result")
                out = (t.get("stdout") or "") + (t.get("stderr") or "")
                if result == "SKIP":
                    p, fl, sk = 0, 0, 1
                else:
                    p, fl, sk = counts(out, result == "OK")
                    if result != "OK" and fl == 0:
                        fl = 1
                seen[name] = p
                passed += p
                failed += fl
                skipped += sk
                if fl:
                    problems.append("%s/%s: %s" % (build, name, result))
                if sk and name not in allowed:
                    problems.append("%s/%s: %d skipped (not allowed: FMQ_ALLOWED_SKIPS)" % (build, name, sk))
        for name, floor in EXPECTED.get(build, {}).items():
            if name not in seen:
                problems.append("%s/%s: did not run" % (build, name))
                failed += 1
            elif seen[name] < floor and name not in allowed:
                problems.append("%s/%s: %d cases passed, expected at least %d" % (build, name, seen[name], floor))
                failed += 1
    for p in problems:
        print("test_summary: " + p)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if problems or failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
