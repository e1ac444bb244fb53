#!/usr/bin/env bash
# scripts/check-layers.sh: the repository passes, and each kind of violation, planted in a copy
# of the sources, fails with a message that names the file, the line and the rule.
source "$(dirname "$0")/lib/common.sh" "$@"
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CHECK="$SRC/scripts/check-layers.sh"

bash "$CHECK" "$SRC" > "$T/ok.txt"
grep -q "check-layers: ok" "$T/ok.txt"

# plant LABEL NEEDLE FILE LINE: a copy with LINE appended to FILE fails and says NEEDLE.
plant() {
    local label=$1 needle=$2 file=$3 line=$4
    rm -rf "$T/tree"
    mkdir -p "$T/tree"
    cp -r "$SRC/include" "$SRC/src" "$SRC/tools" "$SRC/bench" "$T/tree/"
    mkdir -p "$T/tree/tests"
    cp "$SRC"/tests/*.cpp "$SRC"/tests/*.hpp "$T/tree/tests/"
    mkdir -p "$(dirname "$T/tree/$file")"
    echo "$line" >> "$T/tree/$file"
    local rc=0
    bash "$CHECK" "$T/tree" > /dev/null 2> "$T/err.txt" || rc=$?
    if [ "$rc" != 1 ]; then echo "$label: expected exit 1, got $rc"; cat "$T/err.txt"; exit 1; fi
    if ! grep -qF -- "$needle" "$T/err.txt"; then
        echo "$label: expected '$needle' in:"; cat "$T/err.txt"; exit 1
    fi
}

plant "runtime includes methods" \
    "src/runtime/model.cpp:" \
    src/runtime/model.cpp '#include "convscope/methods/occlusion.hpp"'
grep -q "layer 'runtime' includes convscope/methods/occlusion.hpp of the higher layer 'methods'" "$T/err.txt"
plant "public runtime header includes app" \
    "layer 'runtime' includes convscope/app/report.hpp of the higher layer 'app'" \
    include/convscope/runtime/model.hpp '#include "convscope/app/report.hpp"'
plant "methods includes app" \
    "layer 'methods' includes convscope/app/explorer.hpp of the higher layer 'app'" \
    src/methods/tsne.cpp '#include "convscope/app/explorer.hpp"'
plant "app includes a private header of methods" \
    "layer 'app' includes methods/incremental/engine.hpp, a private header of 'methods'" \
    src/app/report.cpp '#include "methods/incremental/engine.hpp"'
plant "a tool includes a private header" \
    "includes runtime/detail/sha256.hpp, a private header of 'runtime' (use a public one)" \
    tools/cli/main.cpp '#include "runtime/detail/sha256.hpp"'
plant "a benchmark includes a private header" \
    "bench/bench_tsne.cpp:" \
    bench/bench_tsne.cpp '#include "methods/detail/tsne_knn.hpp"'
plant "a header of no layer" \
    "includes convscope/occlusion.hpp, which is in no layer" \
    tools/cli/main.cpp '#include "convscope/occlusion.hpp"'
plant "a source outside the layers" \
    "src/extra.cpp: not in a layer's folder" \
    src/extra.cpp '// nothing'
plant "a public header outside the layers" \
    "include/convscope/extra.hpp: a public header outside a layer's folder" \
    include/convscope/extra.hpp '#pragma once'

# Tests may include private headers (white-box tests of the engine): no violation.
rm -rf "$T/tree"; mkdir -p "$T/tree"
cp -r "$SRC/include" "$SRC/src" "$SRC/tools" "$SRC/bench" "$T/tree/"
mkdir -p "$T/tree/tests"; cp "$SRC"/tests/*.cpp "$SRC"/tests/*.hpp "$T/tree/tests/"
echo '#include "methods/incremental/engine.hpp"' >> "$T/tree/tests/test_occlusion.cpp"
bash "$CHECK" "$T/tree" > /dev/null
echo "layers ok"
