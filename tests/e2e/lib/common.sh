# Shared start of the end-to-end scripts: `source "$(dirname "$0")/lib/common.sh" "$@"`.
# Sets BIN (the convscope binary), FIX (the fixtures folder), PY (Debian's python3, which has
# numpy and torch) and T (a temporary folder removed on exit), and defines expect_fail,
# start_server and make_png_bomb. A script that starts a server puts its process id in PID: it
# is stopped on exit.
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

# start_server OUT ERR ARGS...: `convscope serve ARGS` in the background (PID), waits for its
# first line and sets URL.
start_server() {
    local out=$1 err=$2
    shift 2
    "$BIN" serve "$@" >"$out" 2>"$err" &
    PID=$!
    for _ in $(seq 1 300); do
        grep -q "http://" "$out" 2>/dev/null && break
        kill -0 "$PID" 2>/dev/null || { echo "server died"; cat "$err"; exit 1; }
        sleep 0.1
    done
    URL=$(grep -o "http://127.0.0.1:[0-9]*" "$out")
    [ -n "$URL" ] || { echo "no URL"; cat "$out" "$err"; exit 1; }
}

# make_png_bomb FILE: a PNG that declares 30000x30000 pixels in under 100 bytes.
make_png_bomb() {
    $PY - "$1" <<'PYEOF'
import struct, sys, zlib
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(bytes(65))) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PYEOF
}
