"""Cross-validation inside the site's training studies (dicomnode.learn.crossval): every training
study is read out of fold by a model that never trained on it, and the estimate covers them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.learn.crossval import cross_validated, out_of_fold_peaks, train_folds
from dicomnode.segmentation.inference import Segmenter
from dicomnode.train.config import load_config
from dicomnode.train.datasets import TrainingData, load_studies
from tests.train_studies import TINY_PRESET


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-c", "from dicomnode.cli import main; main()", "synth", str(root / "synth"),
                          "--studies", "5", "--seed", "11"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (root / "tiny.toml").write_text(TINY_PRESET)
    # learn trains on every study it is given: no validation or test share
    splits = {"data.train_fraction": 1.0, "data.val_fraction": 0.0, "data.test_fraction": 0.0}
    return load_studies(root / "synth"), load_config(root / "tiny.toml", **splits)


def test_every_training_study_is_read_by_a_fold_model_that_never_saw_it(studies, tmp_path: Path) -> None:
    training, preset = studies
    folds = train_folds(preset, training, TrainingData([], [], {}), 2, tmp_path / "run", device="cpu", threads=1,
                        resume=False, progress=False)
    assert len(folds) == 2
    read = [s.patient_id for fold in folds for s in fold.studies]
    assert sorted(read) == sorted(s.patient_id for s in training)  # each study exactly once
    for fold in folds:
        trained_on = set(json.loads((fold.card.parent / "split.json").read_text())["train"])
        assert trained_on and not trained_on & {s.patient_id for s in fold.studies}

    def load(card: Path) -> Segmenter:
        return Segmenter.from_weights(card, device="cpu")

    peaks = out_of_fold_peaks(folds, load)
    assert all(0 < p <= 1 for p in peaks)
    estimate = cross_validated(folds, load, 0.9)
    assert estimate["folds"] == 2 and estimate["studies"] == len(training)
    assert 0 <= estimate["lesion_sensitivity"] <= 1 and estimate["false_positives_per_study"] >= 0
