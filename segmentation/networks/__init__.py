"""The papers' segmentation networks behind one registry (DESIGN §5).

``build(name, in_channels=2, width="slim")`` returns a :class:`SegmentationNetwork`; ``available()``
lists the names. One module per paper: :mod:`.unet` (plain baseline), :mod:`.msanet` (papers 000/001,
generator + SegAN critic), :mod:`.mams` (paper 002), :mod:`.semisup` (paper 004).
"""

from __future__ import annotations

from .base import SegmentationNetwork, Width, available, build, register

# Importing each module registers its network.
from . import mams, msanet, semisup, unet  # noqa: E402,F401  isort: skip

__all__ = ["SegmentationNetwork", "Width", "available", "build", "register"]
