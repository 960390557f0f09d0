"""``dicomnode evaluate`` on a BS-80K whole-body folder (dicomnode.train.realeval): the lesion model alone,
or the lesions the node reports after the anatomy reading, on simulated studies written in BS-80K's
format (boxes around the truth lesions and the mimics)."""

from __future__ import annotations

import json

import pytest

from dicomnode.segmentation.anatomymap import AnatomyMapper
from dicomnode.segmentation.inference import DEFAULT_CARD
from dicomnode.segmentation.judgement import FEATURES, SecondStage
from dicomnode.segmentation.modelcard import load_card
from dicomnode.segmentation.reading import AnatomyReader
from dicomnode.synth.simulate import simulate_study
from dicomnode.train.realeval import evaluate_bs80k
from tests.bs80k_fixtures import write_simulated


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bs80k") / "wholebody"
    for number, (seed, variant) in enumerate(((51, None), (52, "degenerative-knees"), (53, "injection-site")), start=1):
        write_simulated(root, str(number), simulate_study(seed, variant=variant, metastases=True))
    write_simulated(root, "4", simulate_study(54, variant="dental-sinus", metastases=False))
    return root


def _stage(bias: float) -> SecondStage:
    """A stage for the shipped lesion model that keeps (bias > 0) or dismisses (< 0) every candidate it judges."""
    return SecondStage((0.0,) * len(FEATURES), bias, 0.5, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                       candidate_peak=0.5, lesion_model=load_card(DEFAULT_CARD).version)


def test_the_reading_is_scored_as_the_node_reports_it(folder, tmp_path):
    mapper = AnatomyMapper.default()
    alone = evaluate_bs80k(DEFAULT_CARD, folder, tmp_path / "alone")
    fixed = evaluate_bs80k(DEFAULT_CARD, folder, tmp_path / "fixed", reader=AnatomyReader(mapper, None))
    keep = evaluate_bs80k(DEFAULT_CARD, folder, tmp_path / "keep", reader=AnatomyReader(mapper, _stage(50.0)))
    drop = evaluate_bs80k(DEFAULT_CARD, folder, tmp_path / "drop", reader=AnatomyReader(mapper, _stage(-50.0)))
    assert "reading" not in alone and fixed["reading"] == "anatomy map, fixed rules"
    assert keep["reading"] == drop["reading"] == "anatomy map, fixed rules, second stage"
    assert alone["abnormal_boxes"] == fixed["abnormal_boxes"] > 0 and alone["studies"] == 4
    # the fixed rules only remove what the lesion model reports
    assert fixed["false_positives_per_study"] < alone["false_positives_per_study"]  # the injection site, ...
    assert fixed["lesion_sensitivity"] <= alone["lesion_sensitivity"]
    # a stage that keeps everything down to peak 0.5 reports at least what the fixed rules keep
    assert keep["lesion_sensitivity"] > fixed["lesion_sensitivity"]
    assert keep["false_positives_per_study"] >= fixed["false_positives_per_study"]
    # one that dismisses everything reports nothing: every candidate the fixed rules keep is judged by it
    assert drop["lesion_sensitivity"] == 0 and drop["false_positives_per_study"] == 0
    assert json.loads((tmp_path / "keep" / "bs80k.json").read_text())["lesion_sensitivity"] == keep["lesion_sensitivity"]


def test_the_cli_reads_as_asked(tmp_path):
    """``dicomnode evaluate``: the node's reading by default, ``--fixed-rules-only`` without the second
    stage, ``--lesion-model-only`` without the map (one study: the flags, not the numbers)."""
    from typer.testing import CliRunner

    from dicomnode.cli import app

    folder = tmp_path / "wholebody"
    write_simulated(folder, "1", simulate_study(51, metastases=True))
    readings = {}
    for flag in ("--anatomy", "--fixed-rules-only", "--lesion-model-only"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(app, ["evaluate", "--weights", str(DEFAULT_CARD), "--data", str(folder),
                                          "--out", str(out), "--json", "--device", "cpu", flag])
        assert result.exit_code == 0, result.output
        readings[flag] = json.loads((out / "bs80k.json").read_text()).get("reading")
    assert readings == {"--anatomy": "anatomy map, fixed rules, second stage",
                        "--fixed-rules-only": "anatomy map, fixed rules", "--lesion-model-only": None}
