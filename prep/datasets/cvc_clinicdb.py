"""CVC-ClinicDB colonoscopy polyps: ``Original/`` and ``Ground Truth/`` (TIFF, or the PNG variant)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..tree import LayoutError, SourceTree, read_regular, stem
from .base import Converter, Failure, Record, at, register
from .options import option
from .pairing import pair_by_name


@register
class CVCClinicDB(Converter):
    name = "cvc-clinicdb"
    title = "CVC-ClinicDB"
    modality = "colonoscopy"
    marker = "Original/*.tif"
    layout = ("CVC-ClinicDB/Original/{1..612}.tif + CVC-ClinicDB/Ground Truth/{1..612}.tif; or the PNG variant "
              "PNG/Original/*.png + PNG/Ground Truth/*.png; metadata.csv (frame -> sequence) for --group-by sequence")
    domain = "source"
    esp_name = "cvccdb"
    homepage = "https://polyp.grand-challenge.org/CVCClinicDB/"
    license = "see the official page"
    citation = ("Bernal J, Sanchez FJ, Fernandez-Esparrach G, Gil D, Rodriguez C, Vilarino F. WM-DOVA maps for accurate"
                " polyp highlighting in colonoscopy: validation vs. saliency maps from physicians. Comput Med Imaging "
                "Graph 43:99-111, 2015.")
    fake_counts = {"train": 10, "valid": 1, "test": 1}

    @dataclass(frozen=True)
    class Options:
        variant: Literal["auto", "tif", "png"] = option("auto", help="tif (the original), png (the Kaggle mirror) "
                                                                     "or auto")
        groups_file: str | None = option(None, help="CSV mapping frame -> sequence for --group-by (default: the "
                                                    "mirror's metadata.csv)", flag="--groups-file")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        ext = self.opts.variant
        if ext == "auto":
            try:
                root, ext = tree.find_root("Original/*.tif", self.name), "tif"
            except LayoutError:
                root, ext = tree.find_root("Original/*.png", self.name), "png"
        else:
            root = tree.find_root(f"Original/*.{ext}", self.name)
        groups = self._groups(tree)
        truth = at(root, "Ground Truth")
        records, failures = pair_by_name(
            tree, tree.glob(at(root, f"Original/*.{ext}")),
            lambda img: [f"{truth}/{img.rsplit('/', 1)[1]}"], mask_glob=f"{truth}/*.{ext}")
        return [Record(r.source_id, r.image, r.masks, group=groups.get(r.source_id)) for r in records], failures

    def _groups(self, tree: SourceTree) -> dict[str, str]:
        """frame id -> sequence id, from ``--groups-file`` or the mirror's metadata.csv (absent: empty)."""
        path = self.opts.groups_file
        if path is not None:
            text = read_regular(path).decode("utf-8-sig")
        else:
            found = [f for f in tree.files if f.rsplit("/", 1)[-1].lower() == "metadata.csv"]
            if not found:
                return {}
            text = tree.read(found[0]).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
        cols = list(rows[0]) if rows else []
        frame = next((c for c in cols if "frame" in c.lower()), None)
        seq = next((c for c in cols if "seq" in c.lower()), None)
        if frame is None or seq is None:
            raise LayoutError(f"{path or 'metadata.csv'}: expected a frame column and a sequence column, found {cols}")
        return {stem(str(r[frame]).replace("\\", "/")): str(r[seq]) for r in rows}

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 12, variant: str = "tif", sequences: int = 3) -> Path:
        """``Original/{1..n}.tif`` and ``Ground Truth/`` (space in the name); ``variant='png'`` writes the Kaggle
        mirror (``PNG/`` + ``metadata.csv`` mapping frames to ``sequences`` video sequences)."""
        import numpy as np

        from ..synthetic import png, scene, tiff_lzw, u8, write

        rng = np.random.default_rng(seed)
        base = root / ("CVC-ClinicDB" if variant == "tif" else "cvc-clinicdb-kaggle")
        folder = base if variant == "tif" else base / "PNG"
        enc = tiff_lzw if variant == "tif" else png
        rows = ["frame_id,png_image_path,png_mask_path,sequence_id"]
        for i in range(1, n + 1):
            img, mask = scene(36, 48, rng)
            write(folder / "Original" / f"{i}.{variant}", enc(img))
            write(folder / "Ground Truth" / f"{i}.{variant}", enc(u8(mask)))
            rows.append(f"{i},PNG/Original/{i}.png,PNG/Ground Truth/{i}.png,{1 + (i - 1) * sequences // n}")
        if variant == "png":
            write(base / "metadata.csv", ("\n".join(rows) + "\n").encode())
        return base
