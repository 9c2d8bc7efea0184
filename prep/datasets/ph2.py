"""PH2 dermoscopy: one folder per case with the BMP image and lesion mask in nested folders; ``_roi`` skipped."""

from __future__ import annotations

from ..tree import SourceTree
from .base import Converter, Failure, Record, register
from .folder import pair_pattern


@register
class PH2(Converter):
    name = "ph2"
    title = "PH2 (dermoscopy, Hospital Pedro Hispano)"
    modality = "dermoscopy"
    split_rule = "test"
    marker = "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp"
    layout = ("PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp + "
              "IMDxxx_lesion/IMDxxx_lesion.bmp (IMDxxx_roi/ colour-class masks are not used)")

    def discover(self, tree: SourceTree) -> tuple[list[Record], list[Failure]]:
        return pair_pattern(tree, "IMD*/IMD*_Dermoscopic_Image/IMD*.bmp", "{stem}/{stem}_lesion/{stem}_lesion.bmp",
                            root=self.root(tree))
