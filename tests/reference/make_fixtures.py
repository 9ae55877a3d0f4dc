#!/usr/bin/env python3
"""Reference fixtures for samtune's parity tests, produced by the official
`segment_anything` package (facebookresearch/segment-anything).

A small SAM (same code as the official model, smaller sizes) gets seeded random
weights for every tensor, including `rel_pos` and `pos_embed` that the official
init leaves at zero. The script saves the checkpoint as the official `.pth`
(plus a `{"model": {"module.<key>": ...}}`-wrapped copy, the shape fine-tuning
scripts often write) and the outputs of `SamPredictor` for several prompt kinds on
an image that needs resizing.

    python tests/reference/make_fixtures.py --out tests/fixtures
    python tests/reference/make_fixtures.py --full vit_b --out target/fixtures-full

`--full` builds the official-size model instead (not committed: 375 MB for ViT-B).
"""

import argparse
import copy
import json
import math
import os
import sys
from functools import partial

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.utils.transforms import ResizeLongestSide

# The tiny architecture: every code path of the official one (windows with padding:
# grid 20, window 6 -> 24; two global blocks; cross-attention downsampling).
TINY = dict(
    img_size=320,
    patch_size=16,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=6,
    global_attn_indexes=[1, 3],
    prompt_embed_dim=64,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_heads=8,
    decoder_mlp_dim=128,
    iou_head_depth=3,
    iou_head_hidden_dim=64,
)


def build_tiny(c=TINY):
    """A SAM of the sizes in `c` (keys as in TINY), built by the official modules."""
    grid = c["img_size"] // c["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=c["depth"],
            embed_dim=c["embed_dim"],
            img_size=c["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["num_heads"],
            patch_size=c["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["global_attn_indexes"],
            window_size=c["window_size"],
            out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(c["img_size"], c["img_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"],
                embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_heads"],
            ),
            transformer_dim=c["prompt_embed_dim"],
            iou_head_depth=c["iou_head_depth"],
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
    ).eval()


def randomize(sam, seed):
    """Seeded random values for every state_dict tensor, scaled to keep activations sane."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sam.state_dict().items():
            noise = torch.randn(t.shape, generator=gen)
            if "norm" in name or ".ln" in name or name.endswith(("neck.1.weight", "neck.3.weight")) or (
                "mask_downscaling.1" in name or "mask_downscaling.4" in name or "output_upscaling.1" in name
            ):
                value = (1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise
            elif name.endswith("bias"):
                value = 0.05 * noise
            elif "rel_pos" in name or "pos_embed" in name:
                value = 0.2 * noise
            elif "gaussian" in name:
                value = noise  # the official init: randn, scale 1
            elif "token" in name or (name.startswith("prompt_encoder.") and "_embed" in name):
                # Learned tokens and prompt embeddings. At unit scale the decoder's
                # attention saturates and even PyTorch float32 drifts 3e-4 from float64
                # on these fixtures; at 0.3 the float32/float64 gap is ~1e-5, so the
                # parity tolerance measures the port rather than the conditioning.
                value = 0.3 * noise
            else:
                fan_in = t[0].numel() if t.dim() > 1 else t.numel()
                if "output_upscaling" in name:  # ConvTranspose2d: [in, out, k, k]
                    fan_in = t.shape[0]
                value = noise / np.sqrt(fan_in)
                if name.startswith("mask_decoder.transformer."):
                    # Softer attention for the same reason as the tokens: the float32 vs
                    # float64 gap of PyTorch itself drops from 4e-5 to 3e-6 on ViT-B.
                    value = 0.5 * value
            t.copy_(value)


def pattern_image(h, w):
    """A deterministic, sharp-edged RGB test pattern (also generated by the Rust tests)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    channels = [((x * x * 3 + y * 5 + c * 77 + (x ^ y)) & 255) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def scene_image(h, w, seed=0):
    """A smooth scene with a few objects, so that masks have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([40 + 60 * x / w, 60 + 40 * y / h, 90 + 0 * x], axis=-1)
    disk = (x - 0.55 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.18 * min(h, w)) ** 2
    img[disk] = [220, 60, 50]
    rect = (x > 0.1 * w) & (x < 0.35 * w) & (y > 0.55 * h) & (y < 0.9 * h)
    img[rect] = [40, 200, 90]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def f32(t):
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def run_cases(sam, image, cases, tensors, dtype=torch.float32, suffix=""):
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    tensors["image_embedding" + suffix] = f32(predictor.features)
    tensors["dense_pe" + suffix] = f32(sam.prompt_encoder.get_dense_pe())
    transform = predictor.transform
    previous = {}
    for case in cases:
        name = case["name"]
        coords = labels = boxes = mask_input = None
        if "points" in case:
            pts = np.array(case["points"], dtype=np.float64)
            # one point set per box when both are batched, as `samtune predict` does
            nb = max(1, len(case.get("boxes", [])))
            coords = torch.as_tensor(transform.apply_coords(pts, image.shape[:2]), dtype=dtype)
            coords = coords[None].repeat(nb, 1, 1)
            labels = torch.as_tensor(np.array(case["labels"]), dtype=torch.int)[None].repeat(nb, 1)
        if "boxes" in case:
            b = np.array(case["boxes"], dtype=np.float64)
            boxes = torch.as_tensor(transform.apply_boxes(b, image.shape[:2]), dtype=dtype)
        if "mask_input_from" in case:
            src = previous[case["mask_input_from"]]
            best = int(np.argmax(src["iou"][0]))
            mask_input = torch.as_tensor(src["low_res"][:1, best : best + 1], dtype=dtype)
            tensors[f"{name}.mask_input"] = f32(mask_input)
        with torch.no_grad():
            logits, iou, low_res = predictor.predict_torch(
                coords, labels, boxes, mask_input, case["multimask"], return_logits=True
            )
            if name == "box_point":
                points = (coords, labels) if coords is not None else None
                sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
                tensors[f"{name}.sparse"] = f32(sparse)
                tensors[f"{name}.dense"] = f32(dense)
        masks = logits > sam.mask_threshold
        tensors[f"{name}.low_res_logits{suffix}"] = f32(low_res)
        tensors[f"{name}.iou_predictions{suffix}"] = f32(iou)
        if suffix:
            continue
        tensors[f"{name}.logits"] = f32(logits)
        tensors[f"{name}.masks"] = masks.numpy().astype(np.uint8)
        previous[name] = {"low_res": f32(low_res), "iou": f32(iou)}


CASES = [
    {"name": "point_multimask", "points": [[170, 80]], "labels": [1], "multimask": True},
    {"name": "points_single", "points": [[170, 80], [60, 150]], "labels": [1, 0], "multimask": False},
    {"name": "box", "boxes": [[40, 30, 220, 170]], "multimask": False},
    {"name": "box_point", "boxes": [[120, 40, 240, 130]], "points": [[165, 85]], "labels": [1], "multimask": True},
    {
        "name": "boxes_batch",
        "boxes": [[120, 40, 240, 130], [20, 105, 110, 185], [0, 0, 299, 199]],
        "multimask": True,
    },
    {
        "name": "mask_input",
        "points": [[170, 80]],
        "labels": [1],
        "mask_input_from": "point_multimask",
        "multimask": False,
    },
]

REL_POS_CASES = [  # (q_size, k_size, table length)
    (5, 5, 9),
    (5, 5, 13),
    (7, 7, 5),
    (4, 8, 15),
    (8, 4, 9),
]


def tiny_fixtures(out):
    torch.manual_seed(0)
    sam = build_tiny()
    randomize(sam, seed=1234)
    state = sam.state_dict()
    torch.save(state, os.path.join(out, "tiny_sam.pth"))
    wrapped = {"model": {"module." + k: v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, os.path.join(out, "tiny_sam_wrapped.pth"))

    tensors = {}
    image = scene_image(200, 300)
    Image.fromarray(image).save(os.path.join(out, "scene.png"))
    run_cases(sam, image, CASES, tensors)

    # ResizeLongestSide.apply_image (PIL bilinear, antialiased when shrinking)
    resize_cases = [(200, 300, 320), (37, 53, 64), (480, 640, 320), (333, 101, 128), (64, 64, 64)]
    for h, w, target in resize_cases:
        out_img = ResizeLongestSide(target).apply_image(pattern_image(h, w))
        tensors[f"resize.{h}x{w}to{target}"] = np.ascontiguousarray(out_img)
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1)[None]
    tensors["preprocessed"] = f32(sam.preprocess(resized))

    gen = torch.Generator().manual_seed(7)
    for q, k, length in REL_POS_CASES:
        table = torch.randn((length, 6), generator=gen)
        tensors[f"rel_pos.{q}.{k}.{length}.table"] = f32(table)
        tensors[f"rel_pos.{q}.{k}.{length}.out"] = f32(get_rel_pos(q, k, table))

    train_step_reference(sam, tensors)
    train_steps_reference(sam, tensors)
    optimizer_reference(tensors)

    save_file(tensors, os.path.join(out, "tiny_expected.safetensors"))
    meta = {
        "config": TINY,
        "image": "scene.png",
        "cases": CASES,
        "resize_cases": resize_cases,
        "rel_pos_cases": REL_POS_CASES,
        "num_parameters": sum(p.numel() for p in sam.parameters()),
        "state_dict_keys": {k: list(v.shape) for k, v in state.items()},
        "torch": torch.__version__,
    }
    with open(os.path.join(out, "tiny_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


# parameters whose gradients the training-step fixture keeps
GRAD_PARAMS = [
    "mask_decoder.iou_token.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.bias",
    "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight",
    "mask_decoder.transformer.norm_final_attn.weight",
    "mask_decoder.output_upscaling.0.weight",
    "mask_decoder.output_upscaling.1.weight",
    "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
    "mask_decoder.iou_prediction_head.layers.2.bias",
]


def train_step_reference(sam, tensors):
    """The loss and gradients of one decoder training step (two boxes, multimask, the loss
    of tests/reference/sam_loss.py) on the fixture's image embedding."""
    from sam_loss import sam_loss

    emb = torch.from_numpy(tensors["image_embedding"])
    boxes = torch.tensor([[60.0, 50.0, 200.0, 160.0], [150.0, 20.0, 290.0, 190.0]])  # model frame
    y, x = torch.meshgrid(torch.arange(80.0), torch.arange(80.0), indexing="ij")
    targets = torch.stack([
        (((x - 30) / 18) ** 2 + ((y - 25) / 12) ** 2 <= 1).float(),
        (((x - 55) / 12) ** 2 + ((y - 30) / 20) ** 2 <= 1).float(),
    ])[:, None]
    sam.zero_grad()
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    masks, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    loss = sam_loss(masks, iou, targets)
    loss.backward()
    tensors["train_step.boxes"] = f32(boxes)
    tensors["train_step.targets"] = f32(targets)
    tensors["train_step.loss"] = f32(loss.reshape(1))
    params = dict(sam.named_parameters())
    for name in GRAD_PARAMS:
        tensors[f"train_step.grad.{name}"] = f32(params[name].grad)
    sam.zero_grad()


# samtune's optimizer settings (src/train/config.rs OptimConfig) for the multi-step fixture
STEPS = dict(steps=4, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
             warmup_fraction=0.25, min_lr_ratio=0.01, grad_clip_norm=0.5)


def lr_factor(step, total, warmup_fraction, min_lr_ratio):
    """samtune's schedule (src/train/schedule.rs) as a LambdaLR factor of the peak rate."""
    warmup = int(round(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_steps_reference(sam, tensors):
    """Several decoder training steps with PyTorch's own optimizer machinery:
    `torch.optim.AdamW` (no weight decay on biases and norms, as samtune groups them),
    `clip_grad_norm_` over all trained parameters and a `LambdaLR` of samtune's schedule;
    the decoder's weights after the last step."""
    from sam_loss import sam_loss

    model = copy.deepcopy(sam)
    c = STEPS
    decoder = [p for p in model.mask_decoder.parameters()]
    groups = [
        {"params": [p for p in decoder if p.dim() > 1], "weight_decay": c["weight_decay"]},
        {"params": [p for p in decoder if p.dim() == 1], "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(groups, lr=c["lr"], betas=c["betas"], eps=c["eps"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: lr_factor(s, c["steps"], c["warmup_fraction"], c["min_lr_ratio"])
    )
    emb = torch.from_numpy(tensors["image_embedding"])
    boxes = torch.from_numpy(tensors["train_step.boxes"])
    targets = torch.from_numpy(tensors["train_step.targets"])
    losses = []
    for _ in range(c["steps"]):
        optim.zero_grad()
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        masks, iou = model.mask_decoder(
            emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
        )
        loss = sam_loss(masks, iou, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, c["grad_clip_norm"])
        optim.step()
        schedule.step()
        losses.append(float(loss.detach()))
    tensors["train_steps.losses"] = np.array(losses, dtype=np.float32)
    for name, p in model.mask_decoder.named_parameters():
        tensors[f"train_steps.after.mask_decoder.{name}"] = f32(p)


def optimizer_reference(tensors):
    """PyTorch's `AdamW` (a decayed group of matrices, an undecayed one of vectors),
    `clip_grad_norm_` and a `LambdaLR` of samtune's schedule, on parameters whose
    gradients both sides compute exactly: loss = sum(p * t) + 0.05 * sum(p^2)."""
    rng = np.random.default_rng(7)
    shapes = {"w": (16, 8), "u": (8, 4), "b": (8,), "g": (4,)}
    c = dict(STEPS, steps=6, warmup_fraction=0.34, grad_clip_norm=1.0, lr=0.05, weight_decay=0.1)
    params = {}
    for name, shape in shapes.items():
        params[name] = torch.tensor(rng.standard_normal(shape), dtype=torch.float32, requires_grad=True)
        tensors[f"optim.init.{name}"] = f32(params[name])
        tensors[f"optim.target.{name}"] = rng.standard_normal(shape).astype(np.float32)
    targets = {n: torch.from_numpy(tensors[f"optim.target.{n}"]) for n in shapes}
    groups = [
        {"params": [params["w"], params["u"]], "weight_decay": c["weight_decay"]},
        {"params": [params["b"], params["g"]], "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(groups, lr=c["lr"], betas=c["betas"], eps=c["eps"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: lr_factor(s, c["steps"], c["warmup_fraction"], c["min_lr_ratio"])
    )
    norms = []
    for _ in range(c["steps"]):
        optim.zero_grad()
        loss = sum((p * targets[n]).sum() + 0.05 * (p * p).sum() for n, p in params.items())
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), c["grad_clip_norm"])))
        optim.step()
        schedule.step()
    tensors["optim.grad_norms"] = np.array(norms, dtype=np.float32)
    for name, p in params.items():
        tensors[f"optim.after.{name}"] = f32(p)


def run_cases_float64(sam, image, cases, tensors):
    """The same cases in float64 (suffix `.f64`): the exact result that float32
    implementations, PyTorch's included, approximate. The official positional encoding
    casts coordinates to float32; for this run it keeps the model's dtype."""
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    original = PositionEmbeddingRandom._pe_encoding
    PositionEmbeddingRandom._pe_encoding = lambda self, c: original(
        self, c.to(self.positional_encoding_gaussian_matrix.dtype)
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run_cases(copy.deepcopy(sam).double(), image, cases, tensors, torch.float64, ".f64")
    finally:
        torch.set_default_dtype(default)
        PositionEmbeddingRandom._pe_encoding = original


def full_fixtures(out, variant):
    torch.manual_seed(0)
    sam = sam_model_registry[variant]()
    randomize(sam, seed=99)
    torch.save(sam.state_dict(), os.path.join(out, f"sam_{variant}_random.pth"))
    tensors = {}
    image = scene_image(480, 640, seed=3)
    Image.fromarray(image).save(os.path.join(out, "scene_full.png"))
    cases = [
        {"name": "box", "boxes": [[300, 100, 480, 300]], "multimask": False},
        {"name": "point_multimask", "points": [[350, 190]], "labels": [1], "multimask": True},
    ]
    run_cases(sam, image, cases, tensors)
    run_cases_float64(sam, image, cases, tensors)
    save_file(tensors, os.path.join(out, f"{variant}_expected.safetensors"))
    meta = {
        "variant": variant,
        "image": "scene_full.png",
        "cases": cases,
        "num_parameters": sum(p.numel() for p in sam.parameters()),
        "num_state_dict_tensors": len(sam.state_dict()),
    }
    with open(os.path.join(out, f"{variant}_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--full", choices=["vit_b", "vit_l", "vit_h"], help="official-size model instead")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    if args.full:
        full_fixtures(args.out, args.full)
    else:
        tiny_fixtures(args.out)


if __name__ == "__main__":
    main()
