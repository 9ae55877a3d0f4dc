#!/usr/bin/env python3
"""Checks a checkpoint samtune wrote at another input size (`samtune export --img-size`):

1. its grid tensors are the original ones resized as PyTorch resizes them
   (`F.interpolate`, align_corners=False: bilinear for `pos_embed`, linear along the
   length for the global blocks' `rel_pos` tables);
2. the official classes built with that `img_size` load it strictly and predict the same
   low-res logits and IoUs as `samtune predict` did with it (`--save-logits` output).

    python tests/reference/check_resized.py ORIGINAL.pth RESIZED.safetensors IMG_SIZE \\
        PREDICT_DIR IMAGE x0,y0,x1,y1
"""

import sys

import safetensors.torch
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_fixtures import TINY, build_tiny  # noqa: E402
from check_training_outputs import box_logits_error  # noqa: E402


def main():
    original, resized, img_size, predict_dir, image_path, box = sys.argv[1:7]
    img_size = int(img_size)
    grid = img_size // TINY["patch_size"]
    before = torch.load(original, weights_only=True)
    after = safetensors.torch.load_file(resized)

    pos = before["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    pos = F.interpolate(pos, (grid, grid), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    worst = (pos - after["image_encoder.pos_embed"]).abs().max().item()
    old_global = 2 * (TINY["img_size"] // TINY["patch_size"]) - 1
    for key, table in before.items():
        if "rel_pos" not in key:
            continue
        if table.shape[0] == old_global:
            table = F.interpolate(table.T[None], 2 * grid - 1, mode="linear", align_corners=False)[0].T
        worst = max(worst, (table - after[key]).abs().max().item())
    assert worst < 1e-6, f"resized tensors differ from F.interpolate by {worst}"
    print(f"pos_embed and rel_pos resized as F.interpolate does (largest difference {worst:.1e})")

    sam = build_tiny(dict(TINY, img_size=img_size))
    sam.load_state_dict(after, strict=True)
    err = box_logits_error(sam, predict_dir, image_path, box)
    print(f"the official model at img_size={img_size} loads it strictly; logits relative error {err:.2e}")


if __name__ == "__main__":
    main()
