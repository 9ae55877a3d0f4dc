#!/usr/bin/env bash
# How checkpoints/sam_tiny_source.safetensors was made: samtune pre-trains the tiny SAM
# architecture (configs/arch/tiny.toml) from a random initialisation on 600 generated
# source-domain images, with full fine-tuning (configs/pretrain_tiny.toml). About 25
# minutes on 2 CPU cores; multi-threaded CPU training is not bit-reproducible, so a rerun
# gives a model of the same quality rather than the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
samtune=${SAMTUNE:-"cargo run --release --quiet --"}
$samtune init --arch configs/arch/tiny.toml --seed 0 --out checkpoints/sam_tiny_init.safetensors
$samtune sample-data --domain source --count 600 --size 256 --seed 1 --out data/pretrain-source
$samtune train --config configs/pretrain_tiny.toml "$@"
cp runs/pretrain_tiny/checkpoints/best.safetensors checkpoints/sam_tiny_source.safetensors
