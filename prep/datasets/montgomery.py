"""Montgomery County chest X-rays: lung masks given as separate left and right files, OR-merged."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree, stem
from .base import Converter, Failure, Record, at, register
from .pairing import pair_by_name


@register
class Montgomery(Converter):
    name = "montgomery"
    title = "Montgomery County CXR set"
    modality = "x-ray"
    marker = "CXR_png/MCUCXR_*.png"
    layout = "MontgomerySet/CXR_png/MCUCXR_####_{0,1}.png + ManualMask/{leftMask,rightMask}/MCUCXR_####_{0,1}.png"
    domain = "source"
    esp_name = "lung"
    homepage = "https://lhncbc.nlm.nih.gov/LHC-publications/pubs/TuberculosisChestXrayImageDataSets.html"
    license = "see the official page"
    citation = ("Jaeger S, Candemir S, Antani S, Wang YX, Lu PX, Thoma G. Two public chest X-ray datasets for "
                "computer-aided screening of pulmonary diseases. Quant Imaging Med Surg 4(6):475-477, 2014.")
    fake_counts = {"train": 8, "valid": 1, "test": 1}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        root = self.root(tree)
        images = tree.glob(at(root, "CXR_png/MCUCXR_*.png"))

        def masks(img: str) -> list[str]:
            name = img.rsplit("/", 1)[1]
            return [at(root, f"ManualMask/{side}/{name}") for side in ("leftMask", "rightMask")]

        records, failures = pair_by_name(tree, images, masks)
        records = [Record(r.source_id, r.image, r.masks, info={"tuberculosis": stem(r.image).endswith("_1")})
                   for r in records]
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 10) -> Path:
        """16-bit and 8-bit grey PNG chest X-rays, left and right lung masks in separate folders."""
        import numpy as np

        from ..synthetic import png, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "MontgomerySet"
        for i in range(n):
            name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
            img, _ = scene(96, 80, rng)
            grey = img[..., 0].astype(np.uint16) * 16 if i % 2 == 0 else img[..., 0]  # some 12-bit-in-16 images
            left, right = np.zeros((96, 80), bool), np.zeros((96, 80), bool)
            left[20:80, 8:34] = True
            right[20:80, 46:72] = True
            write(base / "CXR_png" / name, png(grey))
            write(base / "ManualMask" / "leftMask" / name, png(u8(left)))
            write(base / "ManualMask" / "rightMask" / name, png(u8(right)))
            write(base / "ClinicalReadings" / f"{name[:-4]}.txt", b"Patient's Sex: F\n")
        return base
