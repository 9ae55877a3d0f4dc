#!/usr/bin/env python3
"""Reference output of the official automatic mask generator (`SamAutomaticMaskGenerator`)
for samtune's `annotate` parity test.

The bundled tiny SAM (checkpoints/sam_tiny_source.safetensors, architecture in
configs/arch/tiny.toml) is built with the official modules, loaded with strict=True, and
run by the official generator on bundled images with several settings: the official
defaults, looser thresholds, and crops plus small-region removal (which needs OpenCV). Masks are saved as COCO compressed RLE (pycocotools).

    python tests/reference/make_amg_fixtures.py --out tests/fixtures/amg
"""

import argparse
import json
import os
import sys
import tomllib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from make_fixtures import build_tiny  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

IMAGES = [f"data/source/images/{i:04d}.png" for i in range(4)]

# name -> generator settings (besides the model); `samtune annotate` gets the same. The
# official defaults keep no mask of the tiny model (its stability scores are low: its
# logits are less sharp than SAM's), which still checks the filters; the other cases
# loosen the thresholds so that many masks go through NMS, crops and region removal.
CASES = {
    "official": dict(points_per_side=32, images=IMAGES[:1]),
    "loose": dict(points_per_side=32, pred_iou_thresh=0.6, stability_score_thresh=0.7),
    "crops_regions": dict(
        points_per_side=16,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.7,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=60,
    ),
}


def build_from_arch(path):
    """The architecture TOML (fields default to build_sam_vit_b's) as a model."""
    with open(path, "rb") as f:
        spec = tomllib.load(f)
    enc = dict(img_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12,
               mlp_ratio=4.0, window_size=14, global_attn_indexes=[2, 5, 8, 11])
    enc.update(spec.get("image_encoder", {}))
    dec = dict(prompt_embed_dim=256, mask_in_chans=16, depth=2, num_heads=8, mlp_dim=2048,
               iou_head_depth=3, iou_head_hidden_dim=256)
    dec.update(spec.get("decoder", {}))
    assert enc["mlp_ratio"] == 4.0, "build_tiny uses mlp_ratio 4"
    return build_tiny(dict(
        img_size=enc["img_size"], patch_size=enc["patch_size"], embed_dim=enc["embed_dim"],
        depth=enc["depth"], num_heads=enc["num_heads"], window_size=enc["window_size"],
        global_attn_indexes=enc["global_attn_indexes"], prompt_embed_dim=dec["prompt_embed_dim"],
        mask_in_chans=dec["mask_in_chans"], decoder_depth=dec["depth"],
        decoder_heads=dec["num_heads"], decoder_mlp_dim=dec["mlp_dim"],
        iou_head_depth=dec["iou_head_depth"], iou_head_hidden_dim=dec["iou_head_hidden_dim"],
    ))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "checkpoints/sam_tiny_source.safetensors"))
    ap.add_argument("--arch", default=os.path.join(ROOT, "configs/arch/tiny.toml"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)

    sam = build_from_arch(args.arch)
    sam.load_state_dict(load_file(args.checkpoint), strict=True)
    sam.eval()

    out = {"checkpoint": os.path.relpath(args.checkpoint, ROOT), "cases": {}}
    for name, case in CASES.items():
        settings = {k: v for k, v in case.items() if k != "images"}
        images = case.get("images", IMAGES)
        generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **settings)
        per_image = []
        for rel in images:
            image = np.array(Image.open(os.path.join(ROOT, rel)).convert("RGB"))
            records = generator.generate(image)
            per_image.append([
                {
                    "segmentation": r["segmentation"],
                    "area": int(r["area"]),
                    "bbox": [int(v) for v in r["bbox"]],
                    "predicted_iou": float(r["predicted_iou"]),
                    "point_coords": [[float(v) for v in p] for p in r["point_coords"]],
                    "stability_score": float(r["stability_score"]),
                    "crop_box": [int(v) for v in r["crop_box"]],
                }
                for r in records
            ])
            print(f"{name} {rel}: {len(records)} masks")
        out["cases"][name] = {"settings": settings, "images": images, "masks": per_image}
    with open(os.path.join(args.out, "amg_expected.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
