"""Tests of segmentation.networks: the registry, shapes, the output contract and that each net learns."""

from __future__ import annotations

import pytest
import torch

from segmentation.networks import SegmentationNetwork, available, build

torch.set_num_threads(1)


def test_registry_lists_every_network_and_rejects_unknown_names():
    names = available()
    assert "unet" in names
    with pytest.raises(ValueError) as excinfo:
        build("no-such-net")
    for name in names:
        assert name in str(excinfo.value)


@pytest.mark.parametrize("width", ["fat", 0, -3, 2.5, True])
def test_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="width"):
        build("unet", width=width)


@pytest.mark.parametrize("name", available())
def test_eval_output_is_one_logit_map_per_pixel(name):
    net = build(name, in_channels=2, width="slim").eval()
    assert isinstance(net, SegmentationNetwork)
    assert (net.in_channels, net.width) == (2, "slim")
    size = net.window or 256
    with torch.inference_mode():
        out = net(torch.randn(1, 2, size, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 1, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", available())
def test_whole_view_or_stated_window(name):
    """A fully convolutional net takes a whole 1024×256 view; a windowed one says so and refuses it."""
    net = build(name, width="slim").eval()
    view = torch.randn(1, 2, 1024, 256)
    with torch.inference_mode():
        if net.window is None:
            assert net(view).shape == (1, 1, 1024, 256)
        else:
            with pytest.raises(ValueError, match="window"):
                net(view)
            windows = view.unfold(2, net.window, 128).unfold(3, net.window, 128)
            windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, 2, net.window, net.window)
            assert windows.shape[0] == 7  # 256×256 windows at stride 128 over 1024×256 (paper 002)
            assert net(windows).shape == (7, 1, net.window, net.window)


@pytest.mark.parametrize("name", available())
def test_bad_inputs_get_clear_errors(name):
    net = build(name, width="slim").eval()
    size = net.window or 256
    with pytest.raises(ValueError, match="input channel"):
        net(torch.randn(1, 3, size, size))
    with pytest.raises(ValueError, match="N, C, H, W"):
        net(torch.randn(2, size, size))
    if net.window is None:
        with pytest.raises(ValueError, match="multiples"):
            net(torch.randn(1, 2, size + net.size_divisor // 2, size))
