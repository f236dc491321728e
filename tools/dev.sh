#!/usr/bin/env bash
# fleetmq developer entry point: the README's two commands.
#   tools/dev.sh run   install packages, build, start fleetmq (127.0.0.1:1883, data under ./data)
#   tools/dev.sh test  install packages, build, run the whole test suite (debugoptimized, ASan/UBSan,
#                      then the multi-worker suite under TSan)
# Extra arguments after `run` go to fleetmq. Works as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  g++ meson ninja-build pkg-config
  libuv1-dev libmbedtls-dev librocksdb-dev libflatbuffers-dev flatbuffers-compiler
  libjemalloc-dev libabsl-dev doctest-dev libtomlplusplus-dev nlohmann-json3-dev
  mosquitto-clients python3 python3-paho-mqtt openssl
  clang-format cppcheck git tzdata
)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {  # build DIR [meson options...]
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    # A reused directory gets the options asked for now (a stale build-asan
    # configured without sanitizers would otherwise pass as sanitized).
    [ $# -eq 0 ] || meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@"
  fi
  ninja -C "$dir"
}

require_flag() {  # DIR FLAG: every compile command of DIR carries FLAG
  if ! python3 - "$1/compile_commands.json" "$2" <<'PY'
import json, sys
cmds = json.load(open(sys.argv[1]))
sys.exit(0 if cmds and all(sys.argv[2] in c["command"] for c in cmds) else 1)
PY
  then
    echo "dev.sh: $1 is not built with $2" >&2
    exit 1
  fi
}

case "${1:-}" in
  run)
    shift
    install_packages
    [ -f build-release/build.ninja ] || meson setup build-release --buildtype=release
    ninja -C build-release broker/fleetmq bench/fleetmq-bench tools/fleetmq-pki tools/fleetmq-admin tools/fleetmq-device
    exec ./build-release/broker/fleetmq --data_dir=./data "$@"
    ;;
  test)
    install_packages
    build build
    status=0
    meson test -C build --print-errorlogs || status=1
    # The same suite under AddressSanitizer + UndefinedBehaviorSanitizer.
    build build-asan -Db_sanitize=address,undefined -Db_lundef=false
    require_flag build-asan -fsanitize=address,undefined
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      meson test -C build-asan --print-errorlogs || status=1
    # The multi-worker suites under ThreadSanitizer (every integration suite
    # runs two workers): the workers, storage writers, management thread and
    # its job engine with device messages and delivery outcomes, TLS
    # hand-over, tenant CAs added and CRLs reloaded during handshakes must
    # not race (tests/tsan.supp only hides reports from inside Debian's
    # uninstrumented RocksDB; a report fails the test through the harness).
    if [ -f build-tsan/build.ninja ]; then meson configure build-tsan -Db_sanitize=thread >/dev/null
    else meson setup build-tsan -Db_sanitize=thread; fi
    require_flag build-tsan -fsanitize=thread
    ninja -C build-tsan broker/fleetmq tools/fleetmq-admin tools/fleetmq-pki tools/fleetmq-device
    TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp" \
      meson test -C build-tsan --no-rebuild --print-errorlogs integration-workers integration-tls \
      integration-admin integration-jobs integration-config integration-ota integration-health \
      integration-renewal || status=1
    # Skips fail the run, except the disk-full test as a non-root user on a
    # machine without user namespaces (it needs to mount a tmpfs).
    [ "$(id -u)" -eq 0 ] || export FMQ_ALLOWED_SKIPS=integration-disk-full
    python3 tools/test_summary.py build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
      build-tsan/meson-logs/testlog.json || status=1
    exit $status
    ;;
  *)
    echo "usage: tools/dev.sh run [fleetmq flags...] | tools/dev.sh test" >&2
    exit 2
    ;;
esac
