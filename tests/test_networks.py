"""Tests of dicomnode.segmentation.networks: the registry, shapes, the output contract and that each net learns."""

from __future__ import annotations

import copy

import pytest
import torch

from dicomnode.segmentation.networks import NETWORKS, SegmentationNetwork, available, build
from dicomnode.segmentation.networks.blocks import upsample_to
from dicomnode.segmentation.networks.msanet import Critic, multiscale_l1
from dicomnode.train.losses import multiclass_segmentation_loss

torch.set_num_threads(1)


def test_registry_lists_every_network_and_rejects_unknown_names():
    names = available()
    assert "unet" in names
    with pytest.raises(ValueError) as excinfo:
        build("no-such-net")
    for name in names:
        assert name in str(excinfo.value)


def test_the_registry_is_an_explicit_table_of_every_network_module():
    import pkgutil

    import dicomnode.segmentation.networks as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base", "blocks"}
    assert set(NETWORKS) == set(available()) == modules  # one entry per paper module, none by side effect


@pytest.mark.parametrize("name", available())
def test_declared_logit_heads_produce_the_returned_logits(name):
    """Each declared head's output (upsampled to the input size) is one of the logit maps the network
    returns in training, main output first, and every returned map comes from a declared head."""
    torch.manual_seed(0)
    net = build(name, in_channels=2, width=4).train()
    heads = net.logit_heads()
    assert list(heads)[0] == "head" and all(h.out_channels == net.classes and h.bias is not None for h in heads.values())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [head.register_forward_hook(lambda _m, _i, out, name=n: outputs.__setitem__(name, out))
             for n, head in heads.items()]
    size = net.window or 4 * net.size_divisor
    with torch.no_grad():
        logits = net(torch.rand(2, 2, size, size))
    for hook in hooks:
        hook.remove()
    produced = [upsample_to(outputs[n], (size, size)) for n in heads]
    assert len(produced) == len(logits)
    assert all(torch.equal(p, logit) for p, logit in zip(produced, logits))


@pytest.mark.parametrize("width", ["fat", 0, -3, 2.5, True])
def test_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="width"):
        build("unet", width=width)


@pytest.mark.parametrize("name", available())
def test_eval_output_is_one_logit_map_per_pixel_and_class(name):
    net = build(name, in_channels=2, width="slim").eval()
    assert isinstance(net, SegmentationNetwork)
    assert (net.in_channels, net.width) == (2, "slim")
    size = net.window or 256
    with torch.inference_mode():
        out = net(torch.randn(1, 2, size, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, net.classes, size, size)
    assert torch.isfinite(out).all()


WINDOWED = {"mams": 256}  # paper 002: learned ViT position embeddings for 256×256 windows


@pytest.mark.parametrize("name", available())
def test_whole_view_or_stated_window(name):
    """A fully convolutional net takes a whole 1024×256 view; a windowed one says so and refuses it."""
    net = build(name, width="slim").eval()
    assert net.window == WINDOWED.get(name)
    view = torch.randn(1, 2, 1024, 256)
    with torch.inference_mode():
        if net.window is None:
            assert net(view).shape == (1, net.classes, 1024, 256)
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
    with pytest.raises(ValueError, match="float32"):
        net(torch.randint(0, 100, (1, 2, size, size), dtype=torch.int32))
    if net.window is None:
        with pytest.raises(ValueError, match="multiples"):
            net(torch.randn(1, 2, size + net.size_divisor // 2, size))


DEEP_SUPERVISION_OUTPUTS = {"msanet": 4}  # paper 001 § "Deep supervision": four predictions
"""Outputs in training mode per network; a network with no deep supervision returns one."""
TRAINING_SIZE = {"mtunet": 256}
"""Input size at which every parameter is reached: MT-UNet's Gaussian row/column attention sees a
grid of one token per 4×4 window, which at 1/32 of the input needs ≥ 256 pixels to have two."""


@pytest.mark.parametrize("name", available())
def test_training_mode_returns_main_and_deep_supervision_outputs_and_uses_every_parameter(name):
    net = build(name, width="slim").train()
    size = net.window or TRAINING_SIZE.get(name, 64)
    outputs = net(torch.randn(2, 2, size, size))
    assert isinstance(outputs, list)
    assert len(outputs) == DEEP_SUPERVISION_OUTPUTS.get(name, 1)
    assert all(o.shape == (2, net.classes, size, size) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("width, base", [("paper", 64), (12, 12)])
def test_width_sets_the_channel_count(name, width, base):
    """"paper" is base 64 in every paper (001 Table 2; 002 Fig. 1; U-Net); an int is the base itself."""
    net = build(name, width=width).eval()
    ran: list[torch.nn.Conv2d] = []
    for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, args, out: ran.append(module))
    with torch.inference_mode():
        net(torch.zeros(1, 2, net.window or 32, net.window or 32))
    assert net.width == width
    assert ran[0].out_channels == base  # the first convolution applied to the input
    slim = sum(p.numel() for p in build(name, width="slim").parameters())
    assert sum(p.numel() for p in net.parameters()) > slim


@pytest.mark.parametrize("name", available())
def test_channels_last_gives_the_same_logits(name):
    """Inference runs channels-last (benchmarks/inference.py); it must not change the result."""
    torch.manual_seed(0)
    net = build(name, width="slim").eval()
    size = net.window or 128
    x = torch.randn(1, 2, size, size)
    with torch.inference_mode():
        expected = net(x)
        net = net.to(memory_format=torch.channels_last)
        got = net(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def receptive_field(module: torch.nn.Module, channels: int) -> int:
    """Receptive field of ``module`` measured by the gradient of one output pixel w.r.t. the input.

    A copy of the module with every weight positive and BatchNorm in eval mode is used, so no ReLU
    is ever inactive and the gradient is non-zero exactly on the receptive field.
    """
    probe = copy.deepcopy(module).eval()
    with torch.no_grad():
        for conv in (m for m in probe.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
    x = torch.ones(1, channels, 97, 97, requires_grad=True)
    probe(x)[0, 0, 48, 48].backward()
    rows = (x.grad[0].abs().sum(dim=(0, 2)) > 0).nonzero()
    cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero()
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert height == width
    return height


def test_cdc_receptive_field_is_29_and_grows_as_in_paper_001_table_2():
    cdc = build("msanet", width="slim").cdc
    fields = [
        receptive_field(torch.nn.Sequential(*cdc.layers[:depth]), channels=2)
        for depth in range(1, len(cdc.layers) + 1)
    ]
    assert fields == [3, 7, 15, 17, 21, 29]


def _masked_pair(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive 2-channel image and a sparse binary mask."""
    image = torch.rand(2, 2, size, size) + 0.1
    target = (torch.rand(2, 1, size, size) > 0.8).float()
    return image, target


def test_critic_multiscale_l1_is_zero_for_identical_masked_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    critic = Critic(in_channels=2, width="slim")
    image, target = _masked_pair()
    assert multiscale_l1(critic, image, target, target).item() == 0.0
    # predictions that differ from the target only where the image is zero mask identically
    dark = image.clone()
    dark[:, :, :, :32] = 0
    pred = target.clone()
    pred[:, :, :, :32] = 1 - pred[:, :, :, :32]
    assert multiscale_l1(critic, dark, pred, target).item() == 0.0
    assert multiscale_l1(critic, image, pred, target).item() > 0.0
    # a prediction closer to the target gives a smaller loss (the input term alone is an L1 distance)
    near = target.clone()
    near[:, :, :8] = 1 - near[:, :, :8]
    assert 0 < multiscale_l1(critic, image, near, target) < multiscale_l1(critic, image, pred, target)


def test_critic_loss_trains_the_segmentor_and_rejects_mismatched_masks():
    torch.manual_seed(0)
    critic = Critic(in_channels=2, width="slim")
    image, target = _masked_pair()
    pred = torch.full_like(target, 0.5, requires_grad=True)
    multiscale_l1(critic, image, pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pred_prob"):
        multiscale_l1(critic, image, torch.rand(2, 2, 64, 64), target)
    with pytest.raises(ValueError, match="Critic expects"):
        critic(torch.rand(2, 3, 64, 64))


def test_critic_paper_width_is_segans():
    """SegAN's ndf = 64: channels 64, 128, 256, 512, 512, 512 (Xue et al. 2018, net.py NetC)."""
    critic = Critic(in_channels=3, width="paper")
    convs = [m for m in critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 512]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 4, 4, 4, 3]
    assert all(c.stride == (2, 2) for c in convs)


def test_semisup_aggregates_two_views_and_explains_other_channel_counts():
    torch.manual_seed(0)
    net = build("semisup", width="slim").eval()
    view, other = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        with_other = net(torch.cat([view, other], dim=1))
        with_blank = net(torch.cat([view, torch.zeros_like(other)], dim=1))
        swapped = net(torch.cat([other, view], dim=1))
    assert not torch.allclose(with_other, with_blank)  # the other view reaches the output
    assert not torch.allclose(with_other, swapped)  # skips follow channel 0: the view segmented
    single = build("semisup", in_channels=1, width="slim").eval()
    with torch.inference_mode():
        assert single(view + other).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="two views"):
        build("semisup", in_channels=3)


def blobs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2-channel images of bright discs on noise (channel 1 mirrored) and their disc masks."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = torch.zeros(2, 1, size, size)
    for i in range(2):
        for _ in range(3):
            cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
            r = torch.randint(3, size // 10 + 1, (1,), generator=g).item()
            mask[i, 0][(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 1
    image = mask + 0.3 * torch.rand(2, 1, size, size, generator=g)
    return torch.cat([image, image.flip(-1)], dim=1), mask


def bce_dice(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over outputs of BCE + soft Dice (paper 001 Eq. 4 averages over the deep-supervision outputs)."""
    total = torch.zeros(())
    for out in logits:
        prob = torch.sigmoid(out)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        total = total + torch.nn.functional.binary_cross_entropy_with_logits(out, target) + dice
    return total / len(logits)


@pytest.mark.parametrize("name", available())
def test_each_network_drives_its_loss_down_on_a_tiny_batch(name):
    torch.manual_seed(0)
    net = build(name, width="slim").train()
    image, target = blobs(net.window or 64)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        outputs = net(image)
        if net.classes > 1:  # one logit per class (MT-UNet): the discs are class 1
            loss = multiclass_segmentation_loss(outputs[0], target[:, 0].long())
        else:
            loss = bce_dice(outputs, target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
