#!/usr/bin/env python3
"""The five cases of `samtune bench`, with the official `segment_anything` package and
PyTorch, for a side-by-side comparison (bench/compare.sh runs both).

Case 4 is a straightforward PyTorch fine-tuning loop as common scripts write it: once
with the frozen encoder run under no_grad at every step, once with precomputed embeddings.

`--peer fast` is the second peer: the same cases with SDPA attention, bf16 autocast where
the hardware has bf16, and (`--compile`) a torch.compile'd encoder (bench/fast_peer.py).
`--autocast` runs the official code under bf16 autocast and nothing else.

    python bench/reference.py --variant vit_b --threads 2 --json out.json
    python bench/reference.py --peer fast --compile --json fast.json
    python bench/reference.py --case encoder --autocast --json autocast.json   # autocast alone
    python bench/reference.py --device cuda --json out.json   # on an NVIDIA GPU
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import contextlib

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from sam_loss import sam_loss  # noqa: E402  (the same loss as samtune's)

CASES = ["encoder", "decoder_step", "prompt_latency", "finetune", "load"]


def build(variant, tiny):
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from functools import partial

    if not tiny:
        return sam_model_registry[variant]()
    # the same tiny architecture as `samtune bench --tiny`
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=64, img_size=256, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2,
                                      patch_size=16, qkv_bias=True, use_rel_pos=True,
                                      global_attn_indexes=[1], window_size=4, out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(16, 16),
                                     input_image_size=(256, 256), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
    )


def boxes(n, size):
    out = []
    for i in range(n):
        f = (i + 1) / (n + 2)
        out.append([size * f * 0.5, size * f * 0.4, size * (0.5 + f * 0.4), size * (0.45 + f * 0.5)])
    return torch.tensor(out)


DEVICE = torch.device("cpu")


def sync():
    """Waits for queued GPU work, so that a timing covers it (GPU calls are asynchronous)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_reps(reps, fn):
    fn()
    sync()
    out = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def decoder_setup(sam, img, n, autocast):
    for p in sam.image_encoder.parameters():
        p.requires_grad = False
    for p in sam.prompt_encoder.parameters():
        p.requires_grad = False
    opt = torch.optim.AdamW(sam.mask_decoder.parameters(), lr=1e-4, weight_decay=0.01)
    grid = img // 16
    targets = (torch.rand(n, 1, grid * 4, grid * 4, device=DEVICE) < 0.3).float()
    b = boxes(n, img).to(DEVICE)

    def step(embedding):
        with autocast():
            sparse, dense = sam.prompt_encoder(points=None, boxes=b, masks=None)
            masks, iou = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
            loss = sam_loss(masks.float(), iou.float(), targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.mask_decoder.parameters(), 1.0)
        opt.step()

    return step


def run_case(case, args):
    torch.manual_seed(0)
    sam = build(args.variant, args.tiny).to(DEVICE)
    img = sam.image_encoder.img_size
    grid = img // 16
    extra = {}
    autocast = contextlib.nullcontext
    mode = "fp32, the official code"
    x = torch.randn(1, 3, img, img, device=DEVICE)
    if case == "encoder" and (args.peer == "fast" or args.autocast):
        sam.eval()
        with torch.no_grad():
            official = sam.image_encoder(x)
    if args.autocast:
        autocast = lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)  # noqa: E731
        mode = "the official code under bf16 autocast"
    if args.peer == "fast":
        from fast_peer import Peer

        peer = Peer(sam, DEVICE, args.compile and case in ("encoder", "finetune"), bf16=not args.fp32)
        autocast = peer.autocast
        mode = peer.describe()

    def encode(x):
        with torch.no_grad(), autocast():
            return sam.image_encoder(x).float()

    flops = None
    if case == "encoder":
        sam.eval()
        seconds = time_reps(args.reps, lambda: encode(x))
        if args.peer == "fast" or args.autocast:
            error = (encode(x) - official).abs().max() / official.abs().max()
            extra["error vs the official fp32 encoder (max abs / max)"] = float(error)
        desc = f"image encoder forward {img}x{img}, batch 1"
    elif case == "decoder_step":
        step = decoder_setup(sam, img, 8, autocast)
        emb = torch.randn(1, 256, grid, grid, device=DEVICE)
        seconds = time_reps(args.reps, lambda: step(emb))
        desc = "decoder train step: 8 box prompts, multimask, fwd+bwd+AdamW"
    elif case == "prompt_latency":
        sam.eval()
        emb = torch.randn(1, 256, grid, grid, device=DEVICE)
        b = boxes(1, img * 0.75).to(DEVICE)
        h, w = img * 3 // 4, img

        # The dense positional encoding depends on the model alone: computed once, as
        # samtune's predictor does (the official SamPredictor recomputes it at every call;
        # its cost is reported beside).
        with torch.no_grad():
            pe = sam.prompt_encoder.get_dense_pe()

        def predict():
            with torch.no_grad(), autocast():
                sparse, dense = sam.prompt_encoder(points=None, boxes=b, masks=None)
                low, _ = sam.mask_decoder(emb, pe, sparse, dense, True)
                sam.postprocess_masks(low, (h, w), (h, w))

        seconds = time_reps(max(args.reps, 10), predict)
        with torch.no_grad():
            pe_seconds = sorted(time_reps(max(args.reps, 10), sam.prompt_encoder.get_dense_pe))
        extra["dense PE, recomputed at each call by the official predictor, s"] = pe_seconds[len(pe_seconds) // 2]
        desc = "1 box -> 3 masks at image size, on an encoded image (dense PE computed once)"
    elif case == "finetune":
        step = decoder_setup(sam, img, args.ft_prompts, autocast)
        images = [torch.randn(1, 3, img, img, device=DEVICE) for _ in range(args.ft_images)]
        step(encode(images[0]))  # warm-up (and the compiled encoder's compilation)
        sync()
        t = time.perf_counter()
        for _ in range(args.ft_epochs):
            for x in images:
                step(encode(x))
        sync()
        reencode = time.perf_counter() - t
        t = time.perf_counter()
        embs = [encode(x) for x in images]
        for _ in range(args.ft_epochs):
            for e in embs:
                step(e)
        sync()
        pre = time.perf_counter() - t
        seconds = [pre]
        extra = {"without cache (re-encode every step), s": reencode, "speed-up of the cache": reencode / pre}
        desc = f"{args.ft_epochs} epochs x {args.ft_images} images x {args.ft_prompts} box prompts, precomputed embeddings"
    elif case == "load":
        from segment_anything import sam_model_registry

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.pth")
            torch.save(sam.state_dict(), path)
            extra["file MB"] = os.path.getsize(path) / 1e6
            del sam
            if args.tiny:
                loader = lambda: build(args.variant, True).load_state_dict(torch.load(path))
            else:
                loader = lambda: sam_model_registry[args.variant](checkpoint=path).to(DEVICE)
            seconds = time_reps(args.reps, loader)
        desc = "load a full checkpoint (.pth, official loader)"
    else:
        raise SystemExit(f"unknown case {case}")
    s = sorted(seconds)
    median = s[len(s) // 2]
    return {
        "case": case,
        "description": desc,
        "seconds": seconds,
        "median_s": median,
        "spread": (s[-1] - s[0]) / median,
        "flops": flops,
        "mode": mode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "extra": extra,
    }


def gemm_peak():
    a, b = torch.randn(4096, 4096, device=DEVICE), torch.randn(4096, 4096, device=DEVICE)
    reps = 3 if DEVICE.type == "cpu" else 50
    torch.mm(a, b)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync()
    return reps * 2 * 4096**3 / (time.perf_counter() - t) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ft-images", type=int, default=2)
    parser.add_argument("--ft-prompts", type=int, default=8)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--peer", choices=["official", "fast"], default="official",
                        help="official: the package as it is; fast: SDPA, bf16 autocast, compile")
    parser.add_argument("--compile", action="store_true", help="with --peer fast: torch.compile the encoder")
    parser.add_argument("--fp32", action="store_true", help="with --peer fast: no bf16 autocast")
    parser.add_argument("--autocast", action="store_true",
                        help="with --peer official: the official code under bf16 autocast alone")
    parser.add_argument("--case", action="append")
    parser.add_argument("--json")
    parser.add_argument("--child")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.child:
        print(json.dumps(run_case(args.child, args)))
        return
    results = []
    for case in args.case or CASES:
        print(f"running {case} ...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", case] + [a for a in sys.argv[1:] if a not in ("--json",)]
        if args.json:
            cmd = [c for c in cmd if c != args.json]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    doc = {"tool": "pytorch" if args.peer == "official" else "pytorch-fast", "torch": torch.__version__, "threads": args.threads, "device": args.device,
           "variant": "tiny" if args.tiny else args.variant, "gemm_peak_gflops": gemm_peak(), "results": results}
    for r in results:
        print(f"{r['case']:<16} {r['median_s']:>10.4f} s  {r['peak_rss_mb']:>8.0f} MB  {r['description']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
