# Shared start of the end-to-end scripts: `source "$(dirname "$0")/lib/common.sh" "$@"`.
# Sets BIN (the convscope binary), FIX (the fixtures folder), PY (Debian's python3, which has
# numpy and torch) and T (a temporary folder removed on exit), and defines expect_fail. A script
# that starts a server puts its process id in PID: it is stopped on exit.
set -euo pipefail
BIN=$1
FIX=$2
PY=/usr/bin/python3
T=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$T"
}
trap cleanup EXIT

# expect_fail CODE NEEDLE ARGS...: `convscope ARGS` exits with CODE and its stderr says NEEDLE.
expect_fail() {
    local code=$1 needle=$2
    shift 2
    local rc=0
    "$BIN" "$@" >"$T/out.txt" 2>"$T/err.txt" || rc=$?
    if [ "$rc" != "$code" ]; then echo "expected exit $code, got $rc: $*"; cat "$T/err.txt"; exit 1; fi
    if ! grep -q -- "$needle" "$T/err.txt"; then
        echo "expected '$needle' in the message of: $*"; cat "$T/err.txt"; exit 1
    fi
}
