"""STARE retinal vessels: gzipped PPM images (``stare-images.tar``) and two annotators' label tars."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..archive import is_archive
from ..tree import LayoutError, SourceTree
from .base import Converter, Failure, Record, register
from .options import option


@register
class STARE(Converter):
    name = "stare"
    title = "STARE (STructured Analysis of the REtina), vessel labels"
    modality = "fundus"
    split_rule = "test"
    marker = "im*.ppm*"
    layout = ("stare-images.tar (imNNNN.ppm.gz, 397) + labels-ah.tar (imNNNN.ah.ppm.gz, 20) + labels-vk.tar "
              "(imNNNN.vk.ppm.gz); the tars or their extracted folders, the .ppm.gz files gunzipped (.ppm) or not")
    domain = "unseen"
    esp_name = "stare"
    homepage = "https://cecas.clemson.edu/~ahoover/stare/"
    license = "see the official page"
    citation = ("Hoover A, Kouznetsova V, Goldbaum M. Locating blood vessels in retinal images by piecewise threshold "
                "probing of a matched filter response. IEEE Trans Med Imaging 19(3):203-210, 2000.")
    fake_counts = {"test": 4}
    fake_failures = 2  # images without labels

    @dataclass(frozen=True)
    class Options:
        annotator: Literal["ah", "vk"] = option("ah", help="ah (Adam Hoover, the usual ground truth) or vk "
                                                           "(Valentina Kouznetsova)")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        who = self.opts.annotator
        images, labels, failures = {}, {}, []
        for f in tree.files:
            name = f.rsplit("/", 1)[-1]
            for rx, found in ((r"(im\d+)\.ppm(?:\.gz)?", images), (rf"(im\d+)\.{who}\.ppm(?:\.gz)?", labels)):
                m = re.fullmatch(rx, name)
                if m and m.group(1) in found:
                    failures.append(Failure(m.group(1), (f,), f"duplicate file: {found[m.group(1)]} has the same id"))
                elif m:
                    found[m.group(1)] = f
        if not images and not labels:
            tars = [f for f in tree.files if is_archive(f)]
            hint = f"; {', '.join(tars[:3])} are archives: pass the folder holding them as --src" if tars else ""
            raise LayoutError(f"{self.name}: expected imNNNN.ppm[.gz] and imNNNN.{who}.ppm[.gz] files "
                              f"(stare-images.tar, labels-{who}.tar or their contents) under {tree.label}; found "
                              f"{tree.top_level()}{hint}")
        records = [Record(sid, img, (labels[sid],), info={"annotator": who}) for sid, img in images.items()
                   if sid in labels]
        failures += [Failure(sid, (img,), f"image without mask: no {sid}.{who}.ppm[.gz] in labels-{who} (STARE "
                                          f"labels 20 of its 397 images)") for sid, img in images.items()
                     if sid not in labels]
        failures += [Failure(sid, (lab,), "mask without image") for sid, lab in labels.items() if sid not in images]
        return records, failures

    @staticmethod
    def fake(root: Path, seed: int = 0, n: int = 6, labelled: int = 4, archives: bool = True) -> Path:
        """``stare-images.tar`` of ``imNNNN.ppm.gz`` (``n`` images, the first ``labelled`` with labels),
        ``labels-ah.tar`` and ``labels-vk.tar`` of ``imNNNN.{ah,vk}.ppm.gz`` (vk thicker, ah as RGB);
        ``archives=False`` writes the folders the tars extract to instead."""
        import cv2
        import numpy as np

        from medprep.manifests.tar import tar_bytes

        from ..synthetic import ppm_gz, scene, u8, vessels, write

        ids = ("im0001", "im0002", "im0044", "im0077", "im0081", "im0139", "im0162", "im0163")
        rng = np.random.default_rng(seed)
        base = root / "STARE"
        parts: dict[str, dict[str, bytes]] = {"stare-images": {}, "labels-ah": {}, "labels-vk": {}}
        for i, sid in enumerate(ids[:n]):
            img, _ = scene(61, 70, rng)
            ah = vessels(61, 70, rng)
            parts["stare-images"][f"{sid}.ppm.gz"] = ppm_gz(img)
            if i < labelled:
                vk = cv2.dilate(ah.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
                parts["labels-ah"][f"{sid}.ah.ppm.gz"] = ppm_gz(np.repeat(u8(ah)[..., None], 3, axis=2))
                parts["labels-vk"][f"{sid}.vk.ppm.gz"] = ppm_gz(u8(vk))
        for name, members in parts.items():
            if archives:
                write(base / f"{name}.tar", tar_bytes(members))
            else:
                for member, data in members.items():
                    write(base / name / member, data)
        return base
