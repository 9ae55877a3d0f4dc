#!/usr/bin/env bash
# samtune vs the official PyTorch implementation on this machine, case by case and
# interleaved (so both see the same machine state), then BENCHMARKS.md.
#   bench/compare.sh                      # ViT-B, 2 threads, 2 rounds
#   VARIANT=vit_l THREADS=8 ROUNDS=3 bench/compare.sh
#   EXTRA="--tiny --reps 2" OUT=target/bench-smoke bench/compare.sh   # quick smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-vit_b}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
EXTRA=${EXTRA:-}
OUT=${OUT:-target/bench}
REPORT=${REPORT:-BENCHMARKS.md}

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -r tests/reference/requirements.txt
fi
cargo build --release --quiet
mkdir -p "$OUT"
rm -f "$OUT"/*.json
for round in $(seq 1 "$ROUNDS"); do
    for case in encoder decoder_step prompt_latency finetune load; do
        echo "round $round: $case" >&2
        # shellcheck disable=SC2086
        target/release/samtune bench --variant "$VARIANT" --threads "$THREADS" --case "$case" $EXTRA \
            --json "$OUT/samtune-$case-$round.json" > /dev/null
        # shellcheck disable=SC2086
        .venv/bin/python bench/reference.py --variant "$VARIANT" --threads "$THREADS" --case "$case" $EXTRA \
            --json "$OUT/pytorch-$case-$round.json" > /dev/null
    done
done
.venv/bin/python bench/report.py "$OUT" > "$REPORT"
cat "$REPORT"
