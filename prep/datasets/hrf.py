"""HRF (High-Resolution Fundus): ``.jpg``/``.JPG`` images, TIFF vessel and field-of-view masks."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern

CONDITIONS = {"h": "healthy", "g": "glaucoma", "dr": "diabetic retinopathy"}


@register
class HRF(Converter):
    name = "hrf"
    title = "HRF (High-Resolution Fundus image database)"
    modality = "fundus"
    split_rule = "test"
    marker = "manual1/*.tif"
    layout = "images/NN_{h,g,dr}.{jpg|JPG} + manual1/NN_x.tif + mask/NN_x_mask.tif (field of view); 45 images"
    domain = "unseen"
    homepage = "https://www5.cs.fau.de/research/data/fundus-images/"
    license = "see the official page"
    citation = ("Budai A, Bock R, Maier A, Hornegger J, Michelson G. Robust vessel segmentation in fundus images. Int J"
                " Biomed Imaging 2013:154860, 2013.")
    fake_counts = {"test": 6}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        records, failures = pair_pattern(tree, "images/*.jpg", "manual1/{stem}.tif", root=self.root(tree),
                                         extras={"fov": "mask/{stem}_mask.tif"}, ignore_case=True)
        return [Record(r.source_id, r.image, r.masks, extras=r.extras,
                       info={"condition": CONDITIONS.get(r.source_id.rsplit("_", 1)[-1].lower(), "unknown")})
                for r in records], failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 2) -> Path:
        """``images/NN_{h,g,dr}.jpg`` (the ``dr`` ones as ``.JPG``), ``manual1/NN_x.tif`` vessels and RGB
        ``mask/NN_x_mask.tif`` field of view (3n images)."""
        import numpy as np

        from ..synthetic import jpeg, scene, tiff, u8, vessels, write

        rng = np.random.default_rng(seed)
        base = root / "HRF"
        h, w = 40, 60
        yy, xx = np.mgrid[0:h, 0:w]
        fov = ((yy - h / 2) / (h * 0.48)) ** 2 + ((xx - w / 2) / (w * 0.48)) ** 2 <= 1
        for i in range(1, n + 1):
            for cond in CONDITIONS:
                sid = f"{i:02d}_{cond}"
                img, _ = scene(h, w, rng)
                write(base / "images" / f"{sid}.{'JPG' if cond == 'dr' else 'jpg'}", jpeg(img))
                write(base / "manual1" / f"{sid}.tif", tiff(u8(vessels(h, w, rng, fov))))
                write(base / "mask" / f"{sid}_mask.tif", tiff(np.repeat(u8(fov)[..., None], 3, axis=2)))
        return base
