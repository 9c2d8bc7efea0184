"""STARE retinal vessels: gzipped PPM images (``stare-images.tar``) and two annotators' label tars."""

from __future__ import annotations

import re

from ..archive import is_archive
from ..tree import LayoutError, SourceTree
from .base import Converter, Failure, Record, register

ANNOTATORS = ("ah", "vk")  # Adam Hoover (the usual ground truth), Valentina Kouznetsova


@register
class STARE(Converter):
    name = "stare"
    title = "STARE (STructured Analysis of the REtina), vessel labels"
    modality = "fundus"
    split_rule = "test"
    marker = "im*.ppm.gz"
    layout = ("stare-images.tar (imNNNN.ppm.gz, 397) + labels-ah.tar (imNNNN.ah.ppm.gz, 20) + labels-vk.tar "
              "(imNNNN.vk.ppm.gz); the tars or their extracted folders")
    options = {"annotator": "ah"}  # ah (Hoover, default) or vk (Kouznetsova)

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        who = self.opts["annotator"]
        if who not in ANNOTATORS:
            raise ValueError(f"-o annotator={who}: expected one of {', '.join(ANNOTATORS)}")
        images, labels, failures = {}, {}, []
        for f in tree.files:
            name = f.rsplit("/", 1)[-1]
            for rx, found in ((r"(im\d+)\.ppm\.gz", images), (rf"(im\d+)\.{who}\.ppm\.gz", labels)):
                m = re.fullmatch(rx, name)
                if m and m.group(1) in found:
                    failures.append(Failure(m.group(1), (f,), f"duplicate file: {found[m.group(1)]} has the same id"))
                elif m:
                    found[m.group(1)] = f
        if not images and not labels:
            tars = [f for f in tree.files if is_archive(f)]
            hint = f"; {', '.join(tars[:3])} are archives: pass the folder holding them as --src" if tars else ""
            raise LayoutError(f"{self.name}: expected imNNNN.ppm.gz and imNNNN.{who}.ppm.gz files (stare-images.tar, "
                              f"labels-{who}.tar or their contents) under {tree.label}; found {tree.top_level()}{hint}")
        records = [Record(sid, img, (labels[sid],), info={"annotator": who}) for sid, img in images.items()
                   if sid in labels]
        failures += [Failure(sid, (img,), f"image without mask: no {sid}.{who}.ppm.gz in labels-{who} (STARE "
                                          f"labels 20 of its 397 images)") for sid, img in images.items()
                     if sid not in labels]
        failures += [Failure(sid, (lab,), "mask without image") for sid, lab in labels.items() if sid not in images]
        return records, failures
