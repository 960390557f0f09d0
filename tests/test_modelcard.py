"""dicomnode.segmentation.modelcard: cards round-trip, and every kind of mismatch is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dicomnode.segmentation.anatomy import AnatomyLabel
from dicomnode.segmentation.inference import WEIGHTS_DIR, Segmenter
from dicomnode.segmentation.modelcard import (
    FORMAT_VERSION,
    ModelCardError,
    build_network,
    load_card,
    save_model,
    sha256_of,
)
from dicomnode.segmentation.networks import build
from dicomnode.segmentation.preprocess import Preprocessing

torch.set_num_threads(1)


@pytest.fixture
def model(tmp_path):
    """A saved 4-channel-base U-Net taking 2 input channels, and its card path."""
    torch.manual_seed(1)
    net = build("unet", in_channels=2, width=4)
    card = save_model(
        net, tmp_path / "unet", name="dicomnode-unet", version="1", network="unet",
        preprocessing=Preprocessing(window=None), training={"studies": 3}, metrics={"dsc": 0.5},
    )
    return net, card.path


def edit_card(path: Path, **changes) -> Path:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


def test_a_saved_model_loads_with_identical_tensors(model):
    net, card_path = model
    card = load_card(card_path.with_suffix(".safetensors"))
    assert (card.network, card.width, card.in_channels, card.format_version) == ("unet", 4, 2, FORMAT_VERSION)
    assert card.sha256 == sha256_of(card.weights_path)
    assert card.training == {"studies": 3} and card.metrics == {"dsc": 0.5}
    loaded = build_network(card)
    assert not loaded.training
    for key, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_the_shipped_threshold_card_is_valid():
    card = load_card(WEIGHTS_DIR / "threshold.json")
    assert card.network == "threshold" and card.weights is None and card.in_channels == 1
    assert Segmenter.from_weights(WEIGHTS_DIR / "threshold.json").algorithm.name == "dicomnode-threshold"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"network": "resnet"}, "unknown network 'resnet'"),
        ({"format_version": 2}, "format_version 2 is not supported"),
        ({"preprocessing": {"aggregation": "stack", "bladder": "remove"}}, r"unknown preprocessing key.*bladder"),
        ({"preprocessing": {"aggregation": "sum"}}, "aggregation 'sum'"),
        ({"in_channels": 1}, "in_channels 1 but aggregation 'stack' gives 2"),
        ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
        ({"network": ...}, r"missing key\(s\) \['network'\]"),
        ({"sha256": None}, "sha256"),
        ({"threshold": 1.5}, "threshold"),
        ({"weights": "../elsewhere.safetensors"}, "file name beside the card"),
        ({"name": ""}, "name must be"),
    ],
)
def test_cards_that_do_not_match_the_code_are_refused(model, changes, message):
    _, card_path = model
    with pytest.raises(ModelCardError, match=message):
        load_card(edit_card(card_path, **changes))


def test_weights_that_changed_since_the_card_was_written_are_refused(model):
    _, card_path = model
    weights = card_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match="does not match the card"):
        Segmenter.from_weights(weights)


def test_a_missing_weights_file_is_refused(model):
    _, card_path = model
    card_path.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelCardError, match="does not exist"):
        build_network(load_card(card_path))


@pytest.mark.parametrize(
    "changes",
    [{"width": 8}, {"in_channels": 1, "preprocessing": {"aggregation": "none", "window": None}}],
    ids=["width", "in_channels"],
)
def test_tensors_that_do_not_fit_the_card_are_refused_in_plain_words(model, changes):
    _, card_path = model
    card = load_card(edit_card(card_path, **changes))
    with pytest.raises(ModelCardError, match="tensors do not fit network 'unet'") as excinfo:
        build_network(card)
    assert "size mismatch" in str(excinfo.value)


def test_a_window_the_network_cannot_take_is_refused(model):
    _, card_path = model
    card = load_card(edit_card(card_path, preprocessing={"window": 72, "stride": 36}))
    with pytest.raises(ModelCardError, match="size_divisor 16"):
        build_network(card)


def test_bad_json_and_unknown_suffixes_are_refused(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(broken)
    with pytest.raises(ModelCardError, match=".safetensors file with its .json card"):
        load_card(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_card(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"parameters": {"factor": 1.6, "sigma": 2}}, "unknown threshold parameter"),
        ({"parameters": {"factor": 0.5}}, "factor > 1"),
        ({"preprocessing": {"aggregation": "stack"}, "in_channels": 2}, "aggregation must be 'none'"),
        ({"weights": "x.safetensors", "sha256": "0"}, "takes no weights file"),
    ],
)
def test_threshold_cards_are_checked_too(tmp_path, changes, message):
    card = tmp_path / "threshold.json"
    card.write_text((WEIGHTS_DIR / "threshold.json").read_text())
    with pytest.raises(ModelCardError, match=message):
        Segmenter.from_weights(edit_card(card, **changes))


def test_cards_without_a_task_are_planar_lesion_cards_and_the_task_is_written(model):
    """Cards written before the task field read as "planar-lesions"; new cards state their task."""
    _, card_path = model
    assert json.loads(card_path.read_text())["task"] == "planar-lesions"
    edit_card(card_path, task=...)
    assert load_card(card_path).task == "planar-lesions"
    assert load_card(WEIGHTS_DIR / "default.json").task == "planar-lesions"


def test_a_task_its_network_cannot_do_is_refused(model, tmp_path):
    _, card_path = model
    with pytest.raises(ModelCardError, match="task 'bone-age'"):
        load_card(edit_card(card_path, task="bone-age"))
    with pytest.raises(ModelCardError, match="returns 1 logit channel"):
        build_network(load_card(edit_card(card_path, task="anatomy-map")))
    anatomy = build("anatomy", in_channels=1, width=4)
    with pytest.raises(ModelCardError, match="needs 1"):
        save_model(anatomy, tmp_path / "map", name="m", version="1", network="anatomy",
                   preprocessing=Preprocessing(window=None, aggregation="none"))
    card = save_model(anatomy, tmp_path / "map", name="m", version="1", network="anatomy",
                      preprocessing=Preprocessing(window=None, aggregation="none"), task="anatomy-map")
    assert build_network(card).classes == len(AnatomyLabel)
    with pytest.raises(ModelCardError, match="anatomy-map"):
        Segmenter.from_weights(card.path)  # a lesion segmenter refuses an anatomy map


@pytest.fixture
def volume_model(tmp_path):
    """A saved slim MT-UNet SPECT/CT card (task spectct-classes) and its path."""
    torch.manual_seed(2)
    net = build("mtunet", in_channels=2, width=4)
    card = save_model(net, tmp_path / "fused", name="fused", version="1", network="mtunet", task="spectct-classes",
                      channels=("spect", "ct"), classes=("background", "metastatic", "benign"), in_plane_mm=None)
    return net, card.path


def test_the_shipped_volume_models_are_safetensors_cards_of_task_spectct_classes():
    for name, channels in (("spectct-spectct-mtunet-slim", ("spect", "ct")), ("spect-only-mtunet-slim", ("spect",))):
        card = load_card(WEIGHTS_DIR / f"{name}.json")
        assert card.task == "spectct-classes" and card.weights == f"{name}.safetensors"
        assert card.channels == channels and card.classes == ("background", "metastatic", "benign")
        assert card.preprocessing is None and not card.validated_on_real_scans
        assert card.metrics["folds"] == 5 and "preset" in card.training  # recorded with the model, kept
        assert build_network(card).classes == 3
    assert not list(WEIGHTS_DIR.glob("*.pt"))


def test_a_volume_card_reads_back_and_its_classes_decide_the_network_outputs(volume_model):
    net, card_path = volume_model
    card = load_card(card_path)
    assert (card.in_channels, card.channels, card.outputs, card.in_plane_mm) == (2, ("spect", "ct"), 3, None)
    assert "preprocessing" not in json.loads(card_path.read_text())
    loaded = build_network(card)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ModelCardError, match="returns 3 logit channel"):
        build_network(load_card(edit_card(card_path, classes=["background", "lesion"])))


@pytest.mark.parametrize(("changes", "message"), [
    ({"channels": ["spect", "pet"]}, "channels must be distinct names"),
    ({"channels": ["spect"]}, "in_channels 2 but 1 channel"),
    ({"classes": ["metastatic", "benign", "background"]}, "'background' first"),
    ({"classes": ...}, "classes must be"),
    ({"preprocessing": {}}, "reads channels, not preprocessing"),
    ({"in_plane_mm": -1}, "in_plane_mm -1"),
    ({"real_scan_validation": "yes"}, "real_scan_validation must be"),
    ({"task": "planar-lesions"}, "belong to a 'spectct-classes' card"),
])
def test_volume_cards_that_do_not_match_the_code_are_refused(volume_model, changes, message):
    _, card_path = volume_model
    with pytest.raises(ModelCardError, match=message):
        load_card(edit_card(card_path, **changes))
