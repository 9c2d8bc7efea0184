"""medprep: medical segmentation data and teacher features for self-prompting SAM students."""

__version__ = "0.1.0"
