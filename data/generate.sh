#!/usr/bin/env bash
# Regenerates the bundled sample data (deterministic: the same seeds give the same files).
#   data/source/        24 source-domain images (colourful, clean), held out from the
#                       tiny model's pre-training set (other seeds)
#   data/target/train/  40 target-domain images (grayscale, low contrast, textured, noisy)
#   data/target/val/    16 more, for validation and the report
set -euo pipefail
cd "$(dirname "$0")/.."
samtune=${SAMTUNE:-"cargo run --release --quiet --"}
$samtune sample-data --domain source --count 24 --size 256 --seed 2 --out data/source
$samtune sample-data --domain target --count 40 --size 256 --seed 3 --out data/target/train
$samtune sample-data --domain target --count 16 --size 256 --seed 4 --out data/target/val
