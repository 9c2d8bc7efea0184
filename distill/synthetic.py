"""Fake inputs for the teacher cache, in their real formats: SA-1B tars, image folders, a full tiny SAM.

Used by the tests, the benchmark and ``medprep demo``; nothing here is real data or a trained model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from medprep.manifests.synthetic import scene
from medprep.manifests.tar import tar_bytes


def natural_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth RGB uint8 image with a few shapes (compresses like a photo, unlike noise)."""
    return scene(h, w, rng, blobs=3)[0]


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sa1b_annotations(image_id: int, h: int, w: int, rng: np.random.Generator) -> dict:
    """An ``sa_N.json`` document with SA-1B's structure (image info + COCO-RLE masks)."""
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    bw, bh = int(rng.integers(1, w - x)), int(rng.integers(1, h - y))
    return {
        "image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
        "annotations": [{
            "id": image_id * 1000, "segmentation": {"size": [h, w], "counts": "PPYo0"},
            "bbox": [x, y, bw, bh], "area": bw * bh, "predicted_iou": 0.9, "point_coords": [[x + 1.0, y + 1.0]],
            "crop_box": [0, 0, w, h], "stability_score": 0.95,
        }],
    }


def write_sa1b_tar(path: str | Path, image_ids: list[int], rng: np.random.Generator,
                   sizes: list[tuple[int, int]] | None = None, prefix: str = "", distinct: int | None = None) -> Path:
    """Write ``sa_NNNNNN.tar`` holding ``sa_N.jpg`` and ``sa_N.json`` per id, in the SA-1B download format.

    ``prefix`` (e.g. ``"./"``) is prepended to member names; ``sizes`` gives (h, w) per image (default 48x64);
    ``distinct``: draw only that many images and repeat their JPEG bytes (large benchmark tars in seconds).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {}
    jpegs: list[bytes] = []
    for n, image_id in enumerate(image_ids):
        h, w = sizes[n] if sizes else (48, 64)
        if distinct is None or n < distinct:
            jpegs.append(_jpeg(natural_image(h, w, rng)))
        members[f"{prefix}sa_{image_id}.jpg"] = jpegs[n if distinct is None else n % distinct]
        members[f"{prefix}sa_{image_id}.json"] = json.dumps(sa1b_annotations(image_id, h, w, rng)).encode()
    path.write_bytes(tar_bytes(members))
    return path


def write_image_folder(root: str | Path, n: int, rng: np.random.Generator, size: tuple[int, int] = (64, 64),
                       ext: str = "png") -> Path:
    """``n`` images named ``img_000.<ext>`` ... under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(natural_image(*size, rng)).save(root / f"img_{i:03d}.{ext}")
    return root


def sam_around(encoder: nn.Module) -> nn.Module:
    """A full ``segment_anything.Sam`` around ``encoder`` (random prompt encoder and decoder), for SamPredictor."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    s, grid = encoder.img_size, encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(s, s),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=64, num_heads=8)),
    )
    return sam.eval()
