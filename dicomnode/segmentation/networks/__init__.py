"""The papers' segmentation networks behind one explicit registry (docs/segmentation.md).

``build(name, in_channels=2, width="slim")`` returns a :class:`SegmentationNetwork`; ``available()``
lists the names. One module per paper: :mod:`.unet` (plain baseline), :mod:`.anatomy`
(the anatomy map: the same U-Net, one logit per anatomy label), :mod:`.msanet` (papers 000/001,
generator + SegAN critic), :mod:`.mams` (paper 002), :mod:`.mtunet` (paper 003, SPECT/CT slices, three classes),
:mod:`.semisup` (paper 004). :data:`NETWORKS`
is the whole registry: a network is known because it is listed here, not because a module was imported.
"""

from __future__ import annotations

from collections.abc import Callable

from .anatomy import build_anatomy
from .base import SegmentationNetwork, Width
from .mams import build_mams
from .msanet import build_msanet
from .mtunet import build_mtunet
from .semisup import build_semisup
from .unet import build_unet

Factory = Callable[..., SegmentationNetwork]
"""``(in_channels=..., width=...) -> SegmentationNetwork``."""

NETWORKS: dict[str, Factory] = {
    "anatomy": build_anatomy,
    "mams": build_mams,
    "msanet": build_msanet,
    "mtunet": build_mtunet,
    "semisup": build_semisup,
    "unet": build_unet,
}


def available() -> list[str]:
    """Names of the registered networks, sorted."""
    return sorted(NETWORKS)


def build(name: str, *, in_channels: int = 2, width: Width = "slim") -> SegmentationNetwork:
    """Build the network registered as ``name``; :class:`ValueError` listing the names if unknown."""
    try:
        factory = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; available: {', '.join(available())}") from None
    return factory(in_channels=in_channels, width=width)


__all__ = ["NETWORKS", "SegmentationNetwork", "Width", "available", "build"]
