"""Fast attention for SAM image encoders: ``segment_anything``'s attention through
``torch.nn.functional.scaled_dot_product_attention``.

SAM's ``Attention`` adds decomposed relative positions to the attention logits (``add_decomposed_rel_pos``):
``logit[q, k] = scale * q.k + q.Rh[qh, kh] + q.Rw[qw, kw]``. The two position terms depend on the query only
through ``q``, so they form an additive bias of the logits, which SDPA takes as ``attn_mask``: the same function,
computed by a fused kernel (memory-efficient attention on CUDA) instead of an explicit softmax. The weights and the
state dict are unchanged; only the class of each attention block is swapped (:func:`set_attention`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("auto", "sdpa", "reference")


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """The decomposed relative-position term of SAM's attention logits as an additive bias.

    ``q``: ``(B, heads, H * W, C)``; returns ``(B, heads, H * W, H * W)`` in ``q``'s dtype, equal to what
    ``add_decomposed_rel_pos`` adds to the logits.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = size
    b, heads, _, c = q.shape
    r_q = q.reshape(b * heads, h, w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(b, heads, h * w, h * w).to(q.dtype)


def _sdpa_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``segment_anything.modeling.image_encoder.Attention.forward`` with SDPA (same inputs, same result)."""
    b, h, w, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


@functools.cache
def _classes() -> tuple[type, type] | None:
    """segment_anything's ``Attention`` and its SDPA subclass (None without segment-anything installed)."""
    try:
        from segment_anything.modeling.image_encoder import Attention
    except ImportError:  # segment-anything is optional for teachers from elsewhere
        return None
    return Attention, type("SDPAttention", (Attention,), {
        "forward": _sdpa_forward, "__doc__": "SAM attention through scaled_dot_product_attention."})


def sam_attention_blocks(encoder: nn.Module) -> int:
    """How many of ``encoder``'s modules are ``segment_anything`` attention blocks (in either form)."""
    classes = _classes()
    return 0 if classes is None else sum(type(m) in classes for m in encoder.modules())


def set_attention(encoder: nn.Module, attention: str) -> int:
    """Put every ``segment_anything`` attention block of ``encoder`` in the form ``attention`` (``sdpa`` or
    ``reference``), in place; return how many blocks there are.

    Other encoders (a ``module:callable`` teacher with attention of its own) are left alone: 0.
    """
    if attention not in ("sdpa", "reference"):
        raise ValueError(f"attention {attention!r}: expected 'sdpa' or 'reference' (resolve 'auto' first)")
    classes = _classes()
    if classes is None:
        return 0
    n = 0
    for module in encoder.modules():
        if type(module) in classes:  # exactly segment_anything's (a subclass may have a forward of its own)
            module.__class__ = classes[attention == "sdpa"]
            n += 1
    return n


def resolve_attention(attention: str, device: str | torch.device) -> str:
    """The attention actually used: ``auto`` is sdpa on CUDA and the reference (segment_anything's) elsewhere."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown --attention {attention!r}: expected one of {ATTENTIONS}")
    if attention == "auto":
        return "sdpa" if torch.device(device).type == "cuda" else "reference"
    return attention


__all__ = ["ATTENTIONS", "rel_pos_bias", "resolve_attention", "sam_attention_blocks", "set_attention"]
