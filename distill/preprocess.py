"""Teacher input preprocessing, matching each teacher's own code: ``segment_anything`` (resize longest side,
normalise, pad bottom/right) and MedSAM (``MedSAM_Inference.py``: cubic resize of the whole image to 1024 x 1024,
then min-max to [0, 1] per image).

The work is split in two so that the expensive part runs in the decode pool and the cheap part on the device:

- :meth:`Preprocess.host` (pool thread): resize (the longest side to ``img_size``, or the whole image to
  ``img_size`` x ``img_size`` for MedSAM) and place the result in the top-left corner of a zero
  ``img_size`` x ``img_size`` canvas (uint8 for the PIL and MedSAM paths, float32 for torch);
- :meth:`Preprocess.device` (encoder thread): normalise (the recorded mean/std, or min-max per image) and zero
  everything outside the resized image, which equals SAM's "normalise, then pad with zeros".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medprep.manifests.pixels import NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, SAM_MEAN, SAM_STD, longest_side

RESIZES = ("pil", "torch", "medsam")
#: ``hi - lo`` floor of the per-image min-max (MedSAM's ``np.clip(..., a_min=1e-8)``)
MINMAX_EPS = 1e-8


def medsam_resize(image: np.ndarray, size: int) -> np.ndarray:
    """MedSAM's resize (``MedSAM_Inference.py``): ``skimage.transform.resize(image, (size, size), order=3,
    preserve_range=True, anti_aliasing=True).astype(np.uint8)`` of the whole RGB uint8 image (aspect not kept).

    The same computation as scikit-image (>= 0.19) does it, one channel at a time (3-7x faster than its 3-D spline
    over the channel axis, equal to 1e-12 before the uint8 cast; ``tests/test_distill_medsam.py`` compares with
    scikit-image itself): a Gaussian anti-aliasing filter of sigma ``max(0, (factor - 1) / 2)`` per axis, a cubic
    spline zoom (``grid_mode``, mirrored edges), clipped to the image's range, truncated to uint8.
    """
    try:
        from scipy import ndimage
    except ImportError:
        raise ImportError("MedSAM's preprocessing (--encoder medsam, --resize medsam) needs scipy: "
                          "pip install 'medprep[medsam]' (or pass --resize pil for SAM's resize)") from None
    factors = np.array(image.shape[:2], dtype=np.float64) / size
    sigma = np.maximum(0, (factors - 1) / 2)
    pixels = image.astype(np.float64)
    out = np.empty((size, size, image.shape[2]), np.float64)
    for c in range(image.shape[2]):
        channel = ndimage.gaussian_filter(pixels[..., c], sigma, mode="mirror") if sigma.any() else pixels[..., c]
        out[..., c] = ndimage.zoom(channel, 1 / factors, order=3, mode="mirror", grid_mode=True)
    return np.clip(out, pixels.min(), pixels.max()).astype(np.uint8)


@dataclass(frozen=True)
class Preprocess:
    """Recorded teacher preprocessing: input size, resize path and pixel normalisation.

    ``resize="pil"`` is ``ResizeLongestSide.apply_image`` (PIL bilinear on uint8, what ``SamPredictor`` does);
    ``resize="torch"`` is bilinear ``F.interpolate`` with antialias on float pixels (SAM's batched torch path);
    ``resize="medsam"`` is MedSAM's (:func:`medsam_resize`: the whole image to ``img_size`` x ``img_size``, no
    padding). ``minmax`` replaces ``(x - mean) / std`` by MedSAM's per-image ``(x - min) / max(max - min, 1e-8)``
    over the resized image (all channels).
    """

    img_size: int = 1024
    pixel_mean: tuple[float, float, float] = SAM_MEAN
    pixel_std: tuple[float, float, float] = SAM_STD
    resize: str = "pil"
    minmax: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"resize path {self.resize!r} is not known: expected one of {RESIZES}")
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))

    @classmethod
    def named(cls, normalize: str = "sam", img_size: int = 1024, resize: str = "pil") -> "Preprocess":
        """Preprocessing with a named normalisation (see :data:`NORMALIZATIONS`, or ``minmax`` per image)."""
        if normalize in PER_IMAGE_NORMALIZATIONS:
            return cls(img_size, *NORMALIZATIONS["none"], resize=resize, minmax=True)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalisation {normalize!r} is not known: expected one of "
                             f"{sorted(NORMALIZATIONS) + list(PER_IMAGE_NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalize]
        return cls(img_size=img_size, pixel_mean=mean, pixel_std=std, resize=resize)

    def to_attrs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def host(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize an RGB uint8 ``(H, W, 3)`` image; return the ``(3, S, S)`` canvas and the resized ``(h, w)``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        s = self.img_size
        if self.resize == "medsam":
            return torch.from_numpy(np.ascontiguousarray(medsam_resize(image, s).transpose(2, 0, 1))), (s, s)
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
        s, dev = self.img_size, canvases.device
        rows = torch.arange(s, device=dev).view(1, s, 1) < sizes[:, 0].to(dev).view(-1, 1, 1)
        cols = torch.arange(s, device=dev).view(1, 1, s) < sizes[:, 1].to(dev).view(-1, 1, 1)
        inside = (rows & cols)[:, None]
        x = canvases.float()
        if self.minmax:  # over the resized image only
            lo = torch.where(inside, x, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
            hi = torch.where(inside, x, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(MINMAX_EPS)
        else:
            mean = torch.tensor(self.pixel_mean, device=dev).view(1, 3, 1, 1)
            std = torch.tensor(self.pixel_std, device=dev).view(1, 3, 1, 1)
            x = (x - mean) / std
        return torch.where(inside, x, torch.zeros((), dtype=x.dtype, device=dev))
