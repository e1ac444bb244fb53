#!/usr/bin/env bash
# Under Slurm (srun, Open MPI through PMIx): top-patches, embed and evaluate on 3 tasks write the
# bytes of one process, and a top-patches job cancelled mid-scan and submitted again with sbatch
# resumes from its per-rank checkpoints to those bytes. Needs a running Slurm cluster whose
# default partition takes 3 tasks (oversubscribed on a small machine) and a folder every node
# sees; prints one line per check and exits non-zero at the first difference.
# A one-node cluster for this check (Debian's slurmctld, slurmd and munge; munged running):
#   /etc/slurm/slurm.conf: ClusterName=local, SlurmctldHost=<hostname>, AuthType=auth/munge,
#   ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres,
#   SelectTypeParameters=CR_CPU, MpiDefault=pmix, NodeName=<hostname> CPUs=<cores>,
#   PartitionName=debug Nodes=<hostname> Default=YES State=UP OverSubscribe=FORCE:4
#   then start slurmctld and slurmd.
# Usage: bash bench/slurm_check.sh [CONVSCOPE] [FIXTURES] [SHARED_DIR]
set -euo pipefail
BIN=$(realpath "${1:-build/convscope}")
FIX=$(realpath "${2:-build/fixtures}")
T=$(mktemp -d "${3:-/tmp}/slurm_check.XXXXXX")
trap 'rm -rf "$T"' EXIT
for tool in srun sbatch squeue scancel; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: this check needs a Slurm cluster"; exit 1; }
done
# Shared memory between the ranks of a node without the ptrace rights containers lack.
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
M=$FIX/lenet_scripted.pt
PY=/usr/bin/python3
source "$(dirname "$0")/../tests/e2e/lib/ranks.sh"
same_bytes_on_ranks srun -n 3 --overcommit --mpi=pmix
echo "top-patches, embed, evaluate: srun -n 3 writes the bytes of one process"
same() { cmp "$1" "$2" || { echo "differ: $1 $2"; exit 1; }; }

# The README's job script, cancelled once every rank has written a checkpoint, then submitted
# again: it resumes to the bytes of one process.
big=(top-patches --model "$M" --data fashion-mnist:all --indices 0:70000 --batch-size 16 --k 4 --threads 1)
cat >"$T/job.sh" <<EOF
#!/bin/bash
#SBATCH --job-name=convscope-check --nodes=1 --ntasks=3 --overcommit --output=$T/job-%j.log
srun --mpi=pmix "$BIN" ${big[*]} --checkpoint "$T/ck/scan.json" --checkpoint-every 5 --out "$T/job"
EOF
mkdir -p "$T/ck"
wait_job() { while squeue -h -j "$1" 2>/dev/null | grep -q .; do sleep 0.5; done; }
jid=$(sbatch --parsable "$T/job.sh")
for _ in $(seq 1 1200); do
    [ -e "$T/ck/scan.json.rank2" ] && [ -e "$T/ck/scan.json.rank0" ] && [ -e "$T/ck/scan.json.rank1" ] && break
    sleep 0.05
done
scancel "$jid"
wait_job "$jid"
[ ! -e "$T/job/top_patches.json" ] || { echo "the job ended before it was cancelled: use more items"; exit 1; }
jid=$(sbatch --parsable "$T/job.sh")
wait_job "$jid"
"$BIN" "${big[@]}" --out "$T/one" 2>/dev/null
same "$T/one/top_patches.json" "$T/job/top_patches.json"
echo "sbatch: a job cancelled mid-scan resumes from its checkpoints to the bytes of one process"
