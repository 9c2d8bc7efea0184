"""Teacher input preprocessing, matching each teacher's own code: ``segment_anything`` (resize longest side,
normalise, pad bottom/right), MedSAM (``MedSAM_Inference.py``: cubic resize of the whole image to 1024 x 1024,
then min-max to [0, 1] per image) and LiteMedSAM (``CVPR24_LiteMedSAM_infer.py``: longest side to 256 with
``cv2.INTER_AREA``, min-max to [0, 1] over the resized image, pad bottom/right with 0).

A padded image (a build's ``valid_hw``) is preprocessed as the teacher's own code preprocesses its valid pixels:
only the valid region is resized and normalised (min-max over the valid pixels), everything else is the teacher's
padding, 0 after normalisation. In the hflip view the valid region sits at the right of the flipped image.

The work is split in two so that the expensive part runs in the decode pool and the cheap part on the device:

- :meth:`Preprocess.place` (pool thread): resize the valid region (the longest side of the image to
  ``img_size``, or the whole image to ``img_size`` x ``img_size`` for MedSAM) and place it in a zero
  ``img_size`` x ``img_size`` canvas (uint8, float32 for the torch path);
- :meth:`Preprocess.device` (encoder thread): normalise the valid region (the recorded mean/std, or min-max over
  it) and zero everything else, which equals "normalise, then pad with zeros".

:func:`teacher_input` is the reference: the teacher's own order (crop, resize, normalise, pad) one image at a time
in float64 numpy, which ``check-teacher`` compares stores with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medprep.manifests.errors import MissingDependency
from medprep.manifests.pixels import NORMALIZATIONS, PER_IMAGE_NORMALIZATIONS, SAM_MEAN, SAM_STD, longest_side

RESIZES = ("pil", "torch", "medsam", "area")
#: version of the preprocessing rule, recorded in a run's attrs (``preprocess_version``): 2 normalises the valid
#: region of a padded image only and pads with 0 after normalising (the teacher's own code on its valid pixels);
#: runs without it (medprep before 2) normalised the whole padded canvas, padding included
PREPROCESS_VERSION = 2
Region = tuple[int, int, int]  # valid rows, [x0, x1) valid columns of a canvas, in pixels
#: ``hi - lo`` floor of the per-image min-max (MedSAM's ``np.clip(..., a_min=1e-8)``)
MINMAX_EPS = 1e-8


def medsam_resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
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
        raise MissingDependency("MedSAM's preprocessing (--encoder medsam, --resize medsam) needs scipy: "
                                "pip install 'medprep[medsam]' (or pass --resize pil for SAM's resize)") from None
    hw = (size, size) if isinstance(size, int) else size
    factors = np.array(image.shape[:2], dtype=np.float64) / hw
    sigma = np.maximum(0, (factors - 1) / 2)
    pixels = image.astype(np.float64)
    out = np.empty((*hw, image.shape[2]), np.float64)
    for c in range(image.shape[2]):
        channel = ndimage.gaussian_filter(pixels[..., c], sigma, mode="mirror") if sigma.any() else pixels[..., c]
        out[..., c] = ndimage.zoom(channel, 1 / factors, order=3, mode="mirror", grid_mode=True)
    return np.clip(out, pixels.min(), pixels.max()).astype(np.uint8)


def valid_pixels(image: np.ndarray, valid: tuple[int, int] | None, flipped: bool = False) -> np.ndarray:
    """The valid ``(h, w)`` pixels of an image (top-left; top-right in the hflip view); None: all of it."""
    if valid is None:
        return image
    vh, vw = valid
    return image[:vh, image.shape[1] - vw:] if flipped else image[:vh, :vw]


@dataclass(frozen=True)
class Preprocess:
    """Recorded teacher preprocessing: input size, resize path and pixel normalisation.

    ``resize="pil"`` is ``ResizeLongestSide.apply_image`` (PIL bilinear on uint8, what ``SamPredictor`` does);
    ``resize="torch"`` is bilinear ``F.interpolate`` with antialias on float pixels (SAM's batched torch path);
    ``resize="medsam"`` is MedSAM's (:func:`medsam_resize`: the whole image to ``img_size`` x ``img_size``, no
    padding); ``resize="area"`` is LiteMedSAM's (``cv2.INTER_AREA`` on uint8). ``minmax`` replaces
    ``(x - mean) / std`` by MedSAM's per-image ``(x - min) / max(max - min, 1e-8)``
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
        """Resize a whole RGB uint8 ``(H, W, 3)`` image; return the ``(3, S, S)`` canvas and the resized ``(h, w)``."""
        canvas, (h, _, w) = self.place(image)
        return canvas, (h, w)

    def place(self, image: np.ndarray, valid: tuple[int, int] | None = None,
              flipped: bool = False) -> tuple[torch.Tensor, Region]:
        """Resize the valid region of an RGB uint8 ``(H, W, 3)`` image into a zero ``(3, S, S)`` canvas.

        ``valid``: the ``(h, w)`` valid pixels of the unflipped image, top-left (None: all of it); ``flipped``:
        the image is the hflip view, its valid columns at the right. Returns the canvas and the valid region in it
        (rows, ``[x0, x1)`` columns). The region is resized at the scale of the whole image (for a build padded
        after ``--resize longest`` that is the longest side of the valid region to ``S``, the teacher's own).
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        s = self.img_size
        rh, rw, x0, _ = self.layout(image.shape[:2], valid, flipped)
        crop = valid_pixels(image, valid, flipped)
        resized = self._resize(crop, rh, rw)
        if self.resize == "torch":
            canvas = torch.zeros((3, s, s), dtype=torch.float32)
            canvas[:, :rh, x0:x0 + rw] = resized
        else:
            out = np.zeros((3, s, s), dtype=np.uint8)  # numpy: no torch thread pool in decode threads
            out[:, :rh, x0:x0 + rw] = resized.transpose(2, 0, 1)
            canvas = torch.from_numpy(out)
        return canvas, (rh, x0, x0 + rw)

    def layout(self, hw: tuple[int, int], valid: tuple[int, int] | None = None,
               flipped: bool = False) -> tuple[int, int, int, tuple[float, float]]:
        """Where the valid pixels of an ``hw`` image go in the canvas: resized ``(h, w)``, first column, and the
        ``(y, x)`` scale (the whole image's: longest side to ``S``, or both sides to ``S`` for MedSAM)."""
        s, (H, W) = self.img_size, hw
        vh, vw = valid or (H, W)
        if self.resize == "medsam":  # the whole image stretched to S x S
            scale, full_w = (s / H, s / W), s
        else:
            scale, full_w = (s / max(H, W),) * 2, longest_side(H, W, s)[1]
        rh, rw = int(vh * scale[0] + 0.5), int(vw * scale[1] + 0.5)
        return rh, rw, full_w - rw if flipped else 0, scale

    def _resize(self, image: np.ndarray, h: int, w: int) -> Any:
        """``image`` resized to ``(h, w)`` along this path: uint8 ``(h, w, 3)``, or float32 ``(3, h, w)`` for torch."""
        if self.resize == "torch":
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            if (h, w) != image.shape[:2]:
                x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
            return x[0]
        if self.resize == "medsam":
            return medsam_resize(image, (h, w))
        if (h, w) == image.shape[:2]:
            return image
        if self.resize == "area":
            import cv2

            return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA)
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))

    def device(self, canvases: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Normalise a batch of canvases ``(B, 3, S, S)`` over their valid regions and zero the rest.

        ``regions``: ``(B, 3)`` valid rows and ``[x0, x1)`` columns (:meth:`place`), or ``(B, 2)`` ``(h, w)`` of
        a region at the top-left (:meth:`host`).
        """
        s, dev = self.img_size, canvases.device
        regions = regions.to(dev)
        if regions.shape[1] == 2:
            regions = torch.stack([regions[:, 0], torch.zeros_like(regions[:, 0]), regions[:, 1]], dim=1)
        rows = torch.arange(s, device=dev).view(1, s, 1) < regions[:, 0].view(-1, 1, 1)
        cols = torch.arange(s, device=dev).view(1, 1, s)
        cols = (cols >= regions[:, 1].view(-1, 1, 1)) & (cols < regions[:, 2].view(-1, 1, 1))
        inside = (rows & cols)[:, None]
        x = canvases.float()
        if self.minmax:  # over the valid region only
            lo = torch.where(inside, x, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
            hi = torch.where(inside, x, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(MINMAX_EPS)
        else:
            mean = torch.tensor(self.pixel_mean, device=dev).view(1, 3, 1, 1)
            std = torch.tensor(self.pixel_std, device=dev).view(1, 3, 1, 1)
            x = (x - mean) / std
        return torch.where(inside, x, torch.zeros((), dtype=x.dtype, device=dev))


def teacher_input(pre: Preprocess, image: np.ndarray, valid: tuple[int, int] | None = None,
                  flipped: bool = False) -> np.ndarray:
    """The teacher's own input for an RGB uint8 image, in its own order, one image at a time: crop the valid
    pixels, resize them (``segment_anything``'s ``ResizeLongestSide`` for ``pil``/``torch``, ``cv2.INTER_AREA``
    for ``area``, MedSAM's resize for ``medsam``), normalise in float64 (mean/std, or min-max over the resized
    pixels), pad with 0 to ``(3, S, S)`` (bottom/right; at the left in the hflip view). Float32.

    The reference ``check-teacher`` compares stored features with; independent of :meth:`Preprocess.place` /
    :meth:`Preprocess.device`, the cache's own path.
    """
    rh, rw, x0, _ = pre.layout(image.shape[:2], valid, flipped)
    crop = np.ascontiguousarray(valid_pixels(image, valid, flipped))
    if (rh, rw) == crop.shape[:2] and pre.resize != "medsam":
        pixels = crop.astype(np.float64)
    elif pre.resize == "area":
        import cv2

        pixels = cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_AREA).astype(np.float64)
    elif pre.resize == "medsam":
        pixels = medsam_resize(crop, (rh, rw)).astype(np.float64)
    elif pre.resize == "pil":  # ResizeLongestSide.apply_image
        from segment_anything.utils.transforms import resize, to_pil_image

        pixels = np.array(resize(to_pil_image(crop), (rh, rw))).astype(np.float64)
    else:
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()  # ResizeLongestSide.apply_image_torch
        pixels = F.interpolate(x, (rh, rw), mode="bilinear", align_corners=False,
                               antialias=True)[0].permute(1, 2, 0).double().numpy()
    if pre.minmax:
        lo, hi = pixels.min(), pixels.max()
        pixels = (pixels - lo) / max(hi - lo, MINMAX_EPS)
    else:
        pixels = (pixels - np.array(pre.pixel_mean)) / np.array(pre.pixel_std)
    out = np.zeros((3, pre.img_size, pre.img_size), np.float32)
    out[:, :rh, x0:x0 + rw] = pixels.transpose(2, 0, 1)
    return out
