#!/usr/bin/env bash
# Checks the library's layering (docs/ARCHITECTURE.md): runtime <- methods <- app <- tools.
#  - a file of layer L includes public headers (convscope/<M>/...) of L or a lower layer only;
#  - a private header (src/<M>/...) is included only from layer M itself, and from tests/
#    (white-box tests of the engine's plan and kernels);
#  - tools/, bench/ and fuzz/ include public headers only;
#  - every public header and every library source lies in one layer's folder.
# Usage: scripts/check-layers.sh [ROOT]   (ROOT defaults to the repository). Exit 1 on a
# violation, listing each as FILE:LINE: what is wrong.
set -uo pipefail
root=${1:-"$(dirname "$0")/.."}
cd "$root" || { echo "check-layers: no such folder: $root" >&2; exit 2; }

rank() {
  case "$1" in
    runtime) echo 1 ;;
    methods) echo 2 ;;
    app) echo 3 ;;
    *) echo 0 ;;
  esac
}

bad=0
complain() {
  echo "$1" >&2
  bad=1
}

# The layer a library file belongs to ("" for tools, bench and tests).
layer_of() {
  case "$1" in
    include/convscope/*/*) local rest=${1#include/convscope/}; echo "${rest%%/*}" ;;
    src/*/*) local rest=${1#src/}; echo "${rest%%/*}" ;;
    *) echo "" ;;
  esac
}

while IFS= read -r file; do
  layer=$(layer_of "$file")
  case "$file" in
    include/convscope/*/*|src/*/*)
      if [ "$(rank "$layer")" = 0 ]; then
        complain "$file: not in a layer's folder (runtime, methods, app)"
        continue
      fi ;;
    include/*)
      complain "$file: a public header outside a layer's folder (include/convscope/<layer>/)"
      continue ;;
  esac
  while IFS=: read -r line text; do
    inc=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/' <<<"$text")
    case "$inc" in
      convscope/*/*)
        target=${inc#convscope/}; target=${target%%/*}
        if [ "$(rank "$target")" = 0 ]; then
          complain "$file:$line: includes $inc, which is in no layer"
        elif [ -n "$layer" ] && [ "$(rank "$target")" -gt "$(rank "$layer")" ]; then
          complain "$file:$line: layer '$layer' includes $inc of the higher layer '$target'"
        fi ;;
      convscope/*)
        complain "$file:$line: includes $inc, which is in no layer" ;;
      runtime/*|methods/*|app/*)
        target=${inc%%/*}
        case "$file" in
          tests/*) ;;
          tools/*|bench/*|fuzz/*)
            complain "$file:$line: includes $inc, a private header of '$target' (use a public one)" ;;
          *)
            if [ "$target" != "$layer" ]; then
              complain "$file:$line: layer '$layer' includes $inc, a private header of '$target'"
            fi ;;
        esac ;;
    esac
  done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$file" | cut -d: -f1,2-)
done < <(find include src tools bench fuzz tests -type f \( -name '*.hpp' -o -name '*.cpp' -o -name '*.h' \) \
           -not -path '*/node_modules/*' 2>/dev/null | sort)

# A library source directly in src/ (other than the shared precompiled header) has no layer.
while IFS= read -r file; do
  case "$file" in
    src/pch.hpp) ;;
    *) complain "$file: not in a layer's folder (runtime, methods, app)" ;;
  esac
done < <(find src -maxdepth 1 -type f 2>/dev/null | sort)

if [ "$bad" = 0 ]; then
  echo "check-layers: ok"
fi
exit "$bad"
