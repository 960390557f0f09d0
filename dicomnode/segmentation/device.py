"""Which torch device runs a network: the one resolver behind every ``device`` option.

``"auto"`` (or ``None``) is CUDA when this PyTorch sees a GPU, else the CPU; any other name is taken
as asked (``"cpu"``, ``"cuda"``, ``"cuda:1"``), and a CUDA device without a GPU is an error, never a
silent fall-back (a site that configured a GPU must learn that it is not used). The node's worker,
``dicomnode demo``, :class:`dicomnode.segmentation.inference.NetworkSegmenter` and training all resolve here.
"""

from __future__ import annotations

import torch

AUTO = "auto"


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The device ``name`` means here (see the module docstring); :class:`DeviceError` if there is none."""
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(name)!r} was asked for but this PyTorch sees no CUDA GPU; "
                          "use \"auto\" or \"cpu\"")
    return device
