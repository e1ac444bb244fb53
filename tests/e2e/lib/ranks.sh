# Several ranks against one process, shared by tests/e2e/mpi.sh (mpirun) and bench/slurm_check.sh
# (srun): `source` it with BIN, M (a 1x28x28 model), T and PY set, then call
# `same_bytes_on_ranks LAUNCHER...` (a launcher of 3 ranks). top-patches, embed and evaluate on
# the ranks write the bytes of one process (evaluate's timings aside); it exits at the first
# difference. Leaves the one-process scan in $T/one for later checks (`scan` holds its command).
scan=(top-patches --model "$M" --data fashion-mnist:test --indices 0:6000 --batch-size 16 --k 4 --threads 1)
emb=(embed --model "$M" --data fashion-mnist:test --indices 0:300 --batch-size 32 --perplexity 10 --iterations 100
     --threads 1)
ev=(evaluate --model "$M" --data fashion-mnist:test --indices 0:4 --methods saliency,grad-cam,rise,occlusion
    --metrics deletion,infidelity,randomisation --steps 8 --masks 50 --threads 1)

same_bytes_on_ranks() {
    # top-patches: one process, then 3 ranks: the same bytes.
    "$BIN" "${scan[@]}" --out "$T/one" 2>/dev/null
    "$@" "$BIN" "${scan[@]}" --out "$T/three" 2>"$T/three.err"
    cmp "$T/one/top_patches.json" "$T/three/top_patches.json"
    cmp "$T/one/montage_conv1.png" "$T/three/montage_conv1.png"
    grep -q "on 3 ranks" "$T/three.err" || { echo "the ranks were not used"; cat "$T/three.err"; exit 1; }

    # embed: the features (and the map made from them) are the bytes of one process.
    "$BIN" "${emb[@]}" --out "$T/e1" 2>/dev/null
    "$@" "$BIN" "${emb[@]}" --out "$T/e3" 2>/dev/null
    cmp "$T/e1/features.npy" "$T/e3/features.npy"
    cmp "$T/e1/embedding.npy" "$T/e3/embedding.npy"

    # evaluate: the ranks share the methods; the files are those of one process.
    "$BIN" "${ev[@]}" --out "$T/v1" >/dev/null 2>&1
    "$@" "$BIN" "${ev[@]}" --out "$T/v3" >/dev/null 2>&1
    for f in metrics.csv summary.csv maps/saliency.npy maps/grad-cam.npy maps/rise.npy maps/occlusion.npy \
             curves/deletion_morf.png cascade_spearman_abs.png; do
        cmp "$T/v1/$f" "$T/v3/$f"
    done
    $PY - "$T" <<'PYEOF'
import json, sys
t = sys.argv[1]
a, b = (json.load(open(f"{t}/{d}/metrics.json")) for d in ("v1", "v3"))
for j in (a, b):
    assert set(j["seconds"]) == {"saliency", "grad-cam", "rise", "occlusion"}, j["seconds"]
    del j["seconds"]
assert a == b, "metrics.json differs beyond the timings"
PYEOF
}
