"""The second PyTorch peer of bench/reference.py: the official model as a skilled user would
speed it up, without changing its weights or its arithmetic's meaning.

- Attention through `torch.nn.functional.scaled_dot_product_attention` (SDPA): in the image
  encoder with SAM's decomposed relative positions passed as the additive attention mask
  (rel_h[..., :, None] + rel_w[..., None, :], the same terms the official code adds to the
  scores), in the mask decoder plain.
- bf16 autocast (`torch.autocast(device, dtype=torch.bfloat16)`) where the hardware computes
  bf16 natively (CPU: AVX512-BF16 or AMX; CUDA: compute capability 8.0 and up); the
  parameters and the optimizer's state stay fp32 (autocast's mixed precision).
- `torch.compile` of the image encoder (inference only: compiling the training step's
  backward is what users report breaking first; the decoder runs eagerly with SDPA).

`describe()` says which of these a run used, for the report.
"""

import contextlib

import torch
import torch.nn.functional as F


def _encoder_attention(self, x):
    """segment_anything.modeling.image_encoder.Attention.forward through SDPA: [B, H, W, C]."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, HW, head_dim]
    mask = None
    if self.use_rel_pos:
        rh = get_rel_pos(h, h, self.rel_pos_h)  # [H, H, head_dim]
        rw = get_rel_pos(w, w, self.rel_pos_w)  # [W, W, head_dim]
        rq = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw)
        # the official add_decomposed_rel_pos adds these to the scaled scores; SDPA adds its
        # mask to the scaled scores too
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.reshape(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def _decoder_attention(self, q, k, v):
    """segment_anything.modeling.transformer.Attention.forward through SDPA: [B, N, C]."""
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def bf16_native(device):
    """Whether `device` computes bf16 in hardware (else autocast would only emulate it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class Peer:
    """The speed-ups applied to one model: `autocast()` wraps its forward passes."""

    def __init__(self, sam, device, compile_encoder, bf16=True):
        from segment_anything.modeling import image_encoder, transformer

        for module in sam.modules():
            if isinstance(module, image_encoder.Attention):
                module.forward = _encoder_attention.__get__(module)
            elif isinstance(module, transformer.Attention):
                module.forward = _decoder_attention.__get__(module)
        self.device = device
        self.bf16 = bf16 and bf16_native(device)
        self.compiled = compile_encoder
        if compile_encoder:
            sam.image_encoder = torch.compile(sam.image_encoder)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self):
        parts = ["SDPA (encoder rel-pos as its mask)"]
        parts.append("bf16 autocast" if self.bf16 else "fp32 (no native bf16 here)")
        if self.compiled:
            parts.append("torch.compile'd encoder")
        return ", ".join(parts)
