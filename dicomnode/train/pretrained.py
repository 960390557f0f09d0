"""Start a network from weights trained before (transfer learning: simulator → real scans).

:func:`load_pretrained` copies every tensor of a saved model (``.safetensors``, the model-card
format) into a network of the same architecture. One difference is adapted, not refused: the
number of **input channels** of the first convolution, which changes when the preprocessing's
aggregation changes (``stack``: the view and the registered other view, 2 channels; ``none``: the
view alone, 1 channel). The new layer keeps the pretrained filters of the channels both have (the
view being segmented is channel 0 in every aggregation, :func:`dicomnode.segmentation.preprocess.aggregate`)
and starts the others at zero, so the network computes at first what the pretrained one computed
with the missing channels empty. Any other mismatch is an error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn


class PretrainedError(ValueError):
    """Weights that do not fit the network (other than in the input channels)."""


def load_pretrained(net: nn.Module, path: Path | str) -> list[str]:
    """Copy the tensors of ``path`` into ``net``; returns the names whose input channels were adapted."""
    path = Path(path)
    try:
        saved = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise PretrainedError(f"cannot read pretrained weights {path}: {exc}") from None
    state = net.state_dict()
    missing = sorted(set(state) - set(saved))
    unexpected = sorted(set(saved) - set(state))
    if missing or unexpected:
        raise PretrainedError(f"{path} does not fit {type(net).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    adapted = []
    for name, tensor in saved.items():
        target = state[name]
        if tensor.shape == target.shape:
            state[name] = tensor.to(target.dtype)
        elif tensor.dim() == 4 and tensor.shape[0] == target.shape[0] and tensor.shape[2:] == target.shape[2:]:
            common = min(tensor.shape[1], target.shape[1])
            new = torch.zeros_like(target)
            new[:, :common] = tensor[:, :common]
            state[name] = new
            adapted.append(name)
        else:
            raise PretrainedError(f"{path}: {name} is {tuple(tensor.shape)}, the network needs {tuple(target.shape)}")
    net.load_state_dict(state)
    return adapted
