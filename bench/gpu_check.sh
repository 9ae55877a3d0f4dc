#!/usr/bin/env bash
# Checks a GPU build of samtune against the official PyTorch outputs that the tests use
# (tests/fixtures, made by tests/reference/make_fixtures.py) and against the CPU backend:
# the same prompts through `samtune predict` on both devices, compared tensor by tensor.
#   cargo build --release --features cuda && bench/gpu_check.sh
#   DEVICE=wgpu SAMTUNE=path/to/samtune PYTHON=python3 bench/gpu_check.sh
# Exits non-zero when a difference is over the tolerance (1e-3 relative to the values'
# scale: GPU reductions run in another order than the CPU's).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SAMTUNE=${SAMTUNE:-target/release/samtune}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-target/gpu-check}

rm -rf "$OUT"
for device in cpu "$DEVICE"; do
    for prompt in box point; do
        if [ "$prompt" = box ]; then args=(--box 40,30,220,170); else args=(--point 170,80,1 --multimask); fi
        "$SAMTUNE" predict --checkpoint tests/fixtures/tiny_sam.pth --image tests/fixtures/scene.png \
            "${args[@]}" --save-logits --device "$device" --out "$OUT/$prompt-$device" > /dev/null
    done
done

"$PYTHON" - "$OUT" "$DEVICE" << 'EOF'
import sys
import numpy as np
from safetensors.numpy import load_file

out, device = sys.argv[1], sys.argv[2]
official = load_file("tests/fixtures/tiny_expected.safetensors")
worst = 0.0
for prompt, case in [("box", "box"), ("point", "point_multimask")]:
    cpu = load_file(f"{out}/{prompt}-cpu/logits.safetensors")
    gpu = load_file(f"{out}/{prompt}-{device}/logits.safetensors")
    pairs = [
        ("image_embeddings", official["image_embedding"][0]),
        ("low_res_logits", official[f"{case}.low_res_logits"][0]),
        ("iou_predictions", official[f"{case}.iou_predictions"][0]),
    ]
    for name, reference in pairs:
        scale = max(float(np.abs(reference).max()), 1e-6)
        for label, ours in [("cpu", cpu[name]), (device, gpu[name])]:
            err = float(np.abs(ours.reshape(reference.shape) - reference).max()) / scale
            if label != "cpu":
                worst = max(worst, err)
            print(f"{prompt:<6} {name:<17} {label:<5} max |samtune - official| / max|official| = {err:.2e}")
        err = float(np.abs(gpu[name] - cpu[name]).max()) / scale
        print(f"{prompt:<6} {name:<17} {device} vs cpu: {err:.2e}")
print(f"worst {device} error relative to the official outputs: {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
EOF
