"""dicomnode.segmentation.device: the one resolver behind every ``device`` option (worker, demo, inference, training)."""

from __future__ import annotations

import pytest
import torch

from dicomnode.segmentation.device import DeviceError, resolve_device


def test_auto_is_cuda_when_present_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.without_gpu
def test_a_cuda_device_without_a_gpu_is_an_error_not_a_fallback():
    for name in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            resolve_device(name)
