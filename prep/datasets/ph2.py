"""PH2 dermoscopy: one folder per case with the BMP image and lesion mask in nested folders; ``_roi`` skipped."""

from __future__ import annotations

from pathlib import Path

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .pairing import pair_pattern


@register
class PH2(Converter):
    name = "ph2"
    title = "PH2 (dermoscopy, Hospital Pedro Hispano)"
    modality = "dermoscopy"
    split_rule = "test"
    marker = "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp"
    layout = ("PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp + "
              "IMDxxx_lesion/IMDxxx_lesion.bmp (IMDxxx_roi/ colour-class masks are not used)")
    domain = "unseen"
    esp_name = "ph2"
    homepage = "https://www.fc.up.pt/addi/ph2%20database.html"
    license = "see the official page"
    citation = ("Mendonca T, Ferreira PM, Marques JS, Marcal ARS, Rozeira J. PH2 - a dermoscopic image database for "
                "research and benchmarking. IEEE EMBC 2013, 5437-5440.")
    fake_counts = {"test": 6}

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        return pair_pattern(tree, "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp", "{stem}/{stem}_lesion/{stem}_lesion.bmp",
                            root=self.root(tree))

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 6) -> Path:
        """``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` (RGB BMP), ``IMDxxx_lesion/IMDxxx_lesion.bmp`` (8-bit, the
        first one 1-bit), ``IMDxxx_roi/`` colour-class masks to ignore; ids not contiguous."""
        import io

        import numpy as np
        from PIL import Image

        from ..synthetic import bmp, scene, u8, write

        rng = np.random.default_rng(seed)
        base = root / "PH2Dataset"
        cases = base / "PH2 Dataset images"
        for i in range(n):
            sid = f"IMD{2 + 3 * i:03d}"
            img, mask = scene(56, 77, rng)
            write(cases / sid / f"{sid}_Dermoscopic_Image" / f"{sid}.bmp", bmp(img))
            if i == 0:
                buf = io.BytesIO()
                Image.fromarray(mask).convert("1").save(buf, format="BMP")
                write(cases / sid / f"{sid}_lesion" / f"{sid}_lesion.bmp", buf.getvalue())
            else:
                write(cases / sid / f"{sid}_lesion" / f"{sid}_lesion.bmp", bmp(u8(mask)))
            write(cases / sid / f"{sid}_roi" / f"{sid}_R1_Label4.bmp", bmp(u8(~mask)))
        write(base / "PH2_dataset.txt", b"|| Name || Histological Diagnosis || Common Nevus || ...\n")
        return base
