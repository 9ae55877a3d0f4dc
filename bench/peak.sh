#!/usr/bin/env bash
# The CPU's measured arithmetic peaks (bench/peak.rs): fp32 FMA, AMX tile products and
# tile loads, one thread per core (or the number given).
#   bench/peak.sh [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
rustc --edition 2021 -C opt-level=3 bench/peak.rs -o target/bench/peak
exec target/bench/peak "$@"
