"""The anatomy-map network: the plain U-Net of :mod:`.unet` with one logit per anatomy label.

Softmax over the :data:`dicomnode.segmentation.anatomy.LABEL_COUNT` channels gives each pixel its label
(skeletal region, bladder, kidneys, soft tissue, background; docs/segmentation.md, "Anatomy map").
Nothing else differs from the U-Net baseline (Ronneberger et al., MICCAI 2015): anatomy is a
coarse, large-scale task, so the slim width (base 8) on a 4.8 mm grid suffices on the CPU.
The input (counts over the body reference level, :mod:`dicomnode.segmentation.preprocess`) is compressed by
``log(1 + x)`` first: the bladder can be a hundred times brighter than bone, and the map must see
faint soft tissue, bone and a saturated bladder on one scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dicomnode.segmentation.anatomy import LABEL_COUNT

from .base import Width
from .unet import UNet


class AnatomyUNet(UNet):
    """U-Net with one output channel per :class:`dicomnode.segmentation.anatomy.AnatomyLabel`."""

    classes = LABEL_COUNT

    def outputs(self, x: Tensor) -> list[Tensor]:
        return super().outputs(torch.log1p(x.clamp(min=0)))


def build_anatomy(*, in_channels: int = 1, width: Width = "slim") -> AnatomyUNet:
    """The anatomy-map U-Net."""
    return AnatomyUNet(in_channels, width)
