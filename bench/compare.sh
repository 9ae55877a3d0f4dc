#!/usr/bin/env bash
# samtune vs the official PyTorch implementation on this machine, case by case and
# interleaved (so both see the same machine state), then BENCHMARKS.md.
#   bench/compare.sh                      # ViT-B, 2 threads, 3 rounds
#   VARIANT=vit_l THREADS=8 ROUNDS=3 bench/compare.sh
#   EXTRA="--tiny --reps 2" OUT=target/bench-smoke bench/compare.sh   # quick smoke run
#   DEVICE=cuda REPORT=BENCHMARKS-cuda.md bench/compare.sh             # on an NVIDIA GPU
#   FAST=0 bench/compare.sh                # without the second PyTorch peer
#   BF16=0 bench/compare.sh                # without samtune's bf16 encoder (run by default
#                                          # on a CPU with AMX or AVX512-BF16, for the
#                                          # encoder and finetune cases)
#   CASES=finetune EXTRA="--ft-epochs 10 --ft-images 1" bench/compare.sh   # the 10-epoch run
# Two PyTorch peers: the official code as it is (fp32, eager), and the same model as a
# skilled user speeds it up (SDPA attention, bf16 autocast where the hardware has bf16, a
# torch.compile'd encoder: bench/fast_peer.py). Warm-up runs, compilation included, are
# not timed.
# SAMTUNE=path/to/samtune uses a prebuilt binary; PYTHON=python3 a Python that already has
# torch and segment_anything. On a GPU, nvidia-smi is sampled for each case's peak memory.
# CASE_TIMEOUT=SECONDS stops a case that runs longer (a first GPU run compiles its kernels)
# and goes on with the next; the report then lacks that row.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-vit_b}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
EXTRA=${EXTRA:-}
OUT=${OUT:-target/bench}
REPORT=${REPORT:-BENCHMARKS.md}
DEVICE=${DEVICE:-cpu}
FAST=${FAST:-1}
if [ "$DEVICE" = cpu ] && grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2> /dev/null; then BF16=${BF16:-1}; else BF16=${BF16:-0}; fi
CASES=${CASES:-encoder decoder_step prompt_latency finetune load}

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --no-cache-dir -r tests/reference/requirements.txt
    fi
    PYTHON=.venv/bin/python
fi
if [ -z "${SAMTUNE:-}" ]; then
    if [ "$DEVICE" = cpu ]; then
        cargo build --release --quiet
    else
        cargo build --release --quiet --features "$DEVICE"
    fi
    SAMTUNE=target/release/samtune
fi

# Runs one case (the command in "$@"), recording the GPU's peak memory use beside its JSON.
measure() {
    local json=$1 sampler="" idle=""
    shift
    if [ "$DEVICE" != cpu ] && command -v nvidia-smi > /dev/null; then
        idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$json.samples" &
        sampler=$!
    fi
    timeout "${CASE_TIMEOUT:-0}" "$@" > /dev/null || echo "failed or timed out: $*" >&2
    if [ -n "$sampler" ]; then
        kill "$sampler"
        wait "$sampler" 2> /dev/null || true
        sort -n "$json.samples" | tail -1 | awk -v idle="$idle" '{ print $1 - idle }' > "$json.gpu-mb"
        rm -f "$json.samples"
    fi
}

# The same glibc malloc settings for both: samtune sets them itself (src/alloc.rs: keep
# freed memory for reuse, no fresh mmap per large block); PyTorch gets them through
# glibc's environment tunables, so neither side pays page faults the other does not.
PYTORCH_MALLOC=(env MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=536870912 MALLOC_MMAP_MAX_=0)

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.gpu-mb "$OUT/peak.txt"
# the CPU's own peaks (the report's "hardware peak"), measured before the rounds on a
# quiet machine
if [ "$DEVICE" = cpu ] && command -v rustc > /dev/null; then
    bench/peak.sh "$THREADS" > "$OUT/peak.txt" || echo "bench/peak.sh failed: no hardware peak" >&2
fi
for round in $(seq 1 "$ROUNDS"); do
    for case in $CASES; do
        echo "round $round: $case" >&2
        # shellcheck disable=SC2086
        measure "$OUT/samtune-$case-$round.json" "$SAMTUNE" bench --variant "$VARIANT" --threads "$THREADS" \
            --device "$DEVICE" --case "$case" $EXTRA --json "$OUT/samtune-$case-$round.json"
        # shellcheck disable=SC2086
        measure "$OUT/pytorch-$case-$round.json" "${PYTORCH_MALLOC[@]}" "$PYTHON" bench/reference.py --variant "$VARIANT" --threads "$THREADS" \
            --device "$DEVICE" --case "$case" $EXTRA --json "$OUT/pytorch-$case-$round.json"
        if [ "$BF16" = 1 ] && { [ "$case" = encoder ] || [ "$case" = finetune ]; }; then
            # shellcheck disable=SC2086
            measure "$OUT/samtune_bf16-$case-$round.json" "$SAMTUNE" bench --variant "$VARIANT" --threads "$THREADS" \
                --device "$DEVICE" --case "$case" --encoder-precision bf16 $EXTRA --json "$OUT/samtune_bf16-$case-$round.json"
        fi
        if [ "$FAST" = 1 ] && [ "$case" != load ]; then
            # shellcheck disable=SC2086
            measure "$OUT/pytorch-fast-$case-$round.json" "${PYTORCH_MALLOC[@]}" "$PYTHON" bench/reference.py --peer fast --compile \
                --variant "$VARIANT" --threads "$THREADS" --device "$DEVICE" --case "$case" $EXTRA \
                --json "$OUT/pytorch-fast-$case-$round.json"
        fi
    done
done
"$PYTHON" bench/report.py "$OUT" > "$REPORT"
cat "$REPORT"
