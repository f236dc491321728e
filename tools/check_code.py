#!/usr/bin/env python3
"""The static checks CI enforces, as one test each (tests/meson.build):
  format    clang-format --dry-run -Werror over every C++ file git tracks
            (.clang-format: Google style, 120 columns);
  cppcheck  cppcheck with the warning, performance and portability checks
            over what we own (broker, mgmt, storage, common, tools, bench);
            tests are left out (doctest macros confuse it).
Prints 'N passed, N failed' (one per file checked, or per finding) and
exits non-zero on any finding. Usage: tools/check_code.py format|cppcheck"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(*exts):
    out = subprocess.run(["git", "-C", ROOT, "ls-files"] + ["*" + e for e in exts], capture_output=True, text=True,
                         check=True).stdout
    return [os.path.join(ROOT, f) for f in out.split("\n") if f]


def check_format():
    files = tracked(".cc", ".h")
    bad = []
    for f in files:
        r = subprocess.run(["clang-format", "--dry-run", "-Werror", f], capture_output=True, text=True)
        if r.returncode != 0:
            bad.append(f)
            print((r.stderr or r.stdout)[:2000])
    for f in bad:
        print("not formatted: %s (run: clang-format -i %s)" % (os.path.relpath(f, ROOT), os.path.relpath(f, ROOT)))
    return len(files) - len(bad), len(bad)


def check_cppcheck():
    dirs = [os.path.join(ROOT, d) for d in ("broker", "mgmt", "storage", "common", "tools", "bench")]
    r = subprocess.run(["cppcheck", "--std=c++20", "--enable=warning,performance,portability", "--quiet",
                        "--inline-suppr", "--suppress=missingIncludeSystem", "-I", ROOT,
                        "--template={file}:{line}: {severity}: {message} [{id}]", "-j2"] + dirs,
                       capture_output=True, text=True)
    findings = [l for l in (r.stdout + r.stderr).split("\n") if ": " in l and "[" in l]
    for l in findings:
        print(l)
    return (1 if not findings else 0), len(findings)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("format", "cppcheck"):
        sys.exit("usage: check_code.py format|cppcheck")
    passed, failed = check_format() if what == "format" else check_cppcheck()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
