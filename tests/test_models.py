"""Every model the node runs is chosen in node.toml (dicomnode/pipeline/models.py): [model] for the
planar lesions, [model.anatomy], [model.spectct], [model.spect_only]; the shipped ones by default."""

from __future__ import annotations

import logging

import pytest
import torch

from dicomnode.config import ModelSection, TaskModelSection
from dicomnode.pipeline.models import SPECT_ONLY, SPECTCT, NodeModels
from dicomnode.segmentation.modelcard import ModelCardError, save_model
from dicomnode.segmentation.networks import build

torch.set_num_threads(1)


@pytest.fixture
def fused_card(tmp_path):
    torch.manual_seed(0)
    net = build("mtunet", in_channels=2, width=4)
    return save_model(net, tmp_path / "site-fused", name="site-fused", version="7", network="mtunet",
                      task="spectct-classes", channels=("spect", "ct"), classes=("background", "metastatic", "benign"))


def test_each_table_chooses_its_model_and_the_start_logs_each(fused_card, caplog):
    config = ModelSection(weights="threshold", device="cpu", spectct=TaskModelSection(weights=str(fused_card.path)))
    models = NodeModels(config)
    with caplog.at_level(logging.INFO, logger="dicomnode.pipeline.models"):
        models.load_all()
    assert models.get(SPECTCT).card.name == "site-fused"  # type: ignore[attr-defined]
    assert models.get(SPECT_ONLY).card.name == "spect-only-mtunet-slim"  # type: ignore[attr-defined]
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("model [model] (planar whole body): dicomnode-threshold") and "operating point" in line
               for line in lines), lines
    assert any(line.startswith("model [model.anatomy]: dicomnode-anatomy") for line in lines)
    assert any(line.startswith("model [model.spectct]: site-fused 7") and "validated on real scans: no" in line
               for line in lines)
    assert any(line.startswith("model [model.spect_only]: spect-only-mtunet-slim") for line in lines)


def test_a_spect_only_table_refuses_a_model_that_needs_a_ct(fused_card):
    models = NodeModels(ModelSection(device="cpu", spect_only=TaskModelSection(weights=str(fused_card.path))))
    with pytest.raises(ModelCardError, match=r"\[model.spect_only\] .*needs a CT channel"):
        models.get(SPECT_ONLY)


def test_a_planar_card_in_a_volume_table_is_refused():
    from dicomnode.segmentation.inference import DEFAULT_CARD

    models = NodeModels(ModelSection(device="cpu", spectct=TaskModelSection(weights=str(DEFAULT_CARD))))
    with pytest.raises(ModelCardError, match="task 'planar-lesions' is not 'spectct-classes'"):
        models.get(SPECTCT)
