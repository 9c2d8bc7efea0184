"""Teacher input preprocessing, matching ``segment_anything`` (resize longest side, normalise, pad bottom/right).

The work is split in two so that the expensive part runs in the decode pool and the cheap part on the device:

- :meth:`Preprocess.host` (pool thread): resize the longest side to ``img_size`` and place the result in the
  top-left corner of a zero ``img_size`` x ``img_size`` canvas (uint8 for the PIL path, float32 for torch);
- :meth:`Preprocess.device` (encoder thread): normalise with the recorded mean/std and zero everything outside
  the resized image, which equals SAM's "normalise, then pad with zeros".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medprep.manifests.pixels import NORMALIZATIONS, SAM_MEAN, SAM_STD, longest_side

RESIZES = ("pil", "torch")


@dataclass(frozen=True)
class Preprocess:
    """Recorded teacher preprocessing: input size, resize path and pixel normalisation.

    ``resize="pil"`` is ``ResizeLongestSide.apply_image`` (PIL bilinear on uint8, what ``SamPredictor`` does);
    ``resize="torch"`` is bilinear ``F.interpolate`` with antialias on float pixels (SAM's batched torch path).
    """

    img_size: int = 1024
    pixel_mean: tuple[float, float, float] = SAM_MEAN
    pixel_std: tuple[float, float, float] = SAM_STD
    resize: str = "pil"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"resize path {self.resize!r} is not known: expected one of {RESIZES}")
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))

    @classmethod
    def named(cls, normalize: str = "sam", img_size: int = 1024, resize: str = "pil") -> "Preprocess":
        """Preprocessing with a named normalisation (see :data:`NORMALIZATIONS`)."""
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalisation {normalize!r} is not known: expected one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalize]
        return cls(img_size=img_size, pixel_mean=mean, pixel_std=std, resize=resize)

    def to_attrs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def host(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize an RGB uint8 ``(H, W, 3)`` image; return the ``(3, S, S)`` canvas and the resized ``(h, w)``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        s = self.img_size
        h, w = longest_side(image.shape[0], image.shape[1], s)
        if self.resize == "pil":
            img = image
            if (h, w) != img.shape[:2]:
                img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR))
            canvas = np.zeros((3, s, s), dtype=np.uint8)  # numpy: no torch thread pool in decode threads
            canvas[:, :h, :w] = img.transpose(2, 0, 1)
            canvas = torch.from_numpy(canvas)
        else:
            x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
            if (h, w) != image.shape[:2]:
                x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
            canvas = torch.zeros((3, s, s), dtype=torch.float32)
            canvas[:, :h, :w] = x[0]
        return canvas, (h, w)

    def device(self, canvases: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Normalise a batch of host canvases ``(B, 3, S, S)`` and zero the padding (``sizes``: ``(B, 2)``)."""
        mean = torch.tensor(self.pixel_mean, device=canvases.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, device=canvases.device).view(1, 3, 1, 1)
        x = (canvases.float() - mean) / std
        s = self.img_size
        rows = torch.arange(s, device=x.device).view(1, s, 1) < sizes[:, 0].to(x.device).view(-1, 1, 1)
        cols = torch.arange(s, device=x.device).view(1, 1, s) < sizes[:, 1].to(x.device).view(-1, 1, 1)
        return torch.where((rows & cols)[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
