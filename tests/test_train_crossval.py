"""Cross-validation on BS-80K-format fixtures end to end, and the commands that detect the formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dicomnode.segmentation.modelcard import load_card
from tests.bs80k_fixtures import HotSpot, write_crops, write_wholebody
from tests.train_studies import TINY_PRESET
from dicomnode.train.crossval import main as crossval_main
from dicomnode.train.foldaverage import main as foldaverage_main
from dicomnode.train.learningcurve import main as learningcurve_main


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bs80k")
    for k in range(6):
        spots = [HotSpot(40 + 20 * k, 10 + 2 * k, 3)] if k % 2 == 0 else []
        write_wholebody(root / "wholebody", f"{k + 1}", spots + [HotSpot(200, 15, 4, abnormal=False)],
                        rows=256, columns=30, seed=k)
    write_crops(root / "crops", [True, False] * 5, rows=64, columns=30)
    preset = root / "tiny.toml"
    preset.write_text(TINY_PRESET)
    return root / "wholebody", root / "crops", preset


@pytest.mark.slow
def test_crossvalidation_scores_every_fold_on_patients_it_did_not_train_on(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    wholebody, crops, preset = folders
    out = tmp_path / "cv"
    crossval_main(["--config", str(preset), "--data", str(wholebody), "--data", str(crops), "--out", str(out),
                   "--folds", "2", "--threads", "1", "--final"])
    table = json.loads((out / "crossval.json").read_text())
    assert [row["fold"] for row in table["folds"]] == [1, 2]
    for number, row in enumerate(table["folds"], start=1):
        card = load_card(out / f"fold{number}" / "tiny.json")
        held_out = set(card.training["held_out_patients"])
        trained = json.loads((out / f"fold{number}" / "split.json").read_text())["train"]
        assert held_out and not held_out & set(trained)  # judged only on patients it never saw
        assert row["studies"] == len(held_out) and 0 <= row["lesion_sensitivity"] <= 1
        assert row["crops"] > 0 and 0 <= row["crop_auc"] <= 1
    assert set(table["cross_validated"]) >= {"lesion_sensitivity", "false_positives_per_study", "study_auc", "crop_auc"}
    final = load_card(Path(table["final"]))
    point = table["pooled_operating_point"]
    assert final.threshold == point["threshold"] and final.operating_point.peak_threshold == point["peak_threshold"]
    assert final.operating_point.test_time_flip and "cross_validated_real" in final.metrics
    assert [s["format"] for s in final.training["data_sources"]] == ["bs80k-wholebody", "bs80k-crops"]
    assert (out / "fold1" / "oof.npz").is_file()
    assert table["pictures"]["files"] and all((out / "pictures" / f).is_file() for f in table["pictures"]["files"])
    # the fold models averaged two ways, judged beside the shipped one on simulated studies
    sim = tmp_path / "sim"
    synth = subprocess.run([sys.executable, "-c", "from dicomnode.cli import main; main()", "synth", str(sim),
                            "--studies", "2", "--size", "small", "--seed", "7"], capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    foldaverage_main(["--cv", str(out), "--card", table["final"], "--sim-test", str(sim), "--threads", "1"])
    compared = json.loads((out / "fold-average" / "fold-average-table.json").read_text())
    assert [r["model"].split(" ")[0] for r in compared["rows"]] == ["shipped", "fold", "fold", "ensemble", "weight"]
    assert compared["studies"] == 2 and all(r["ms_per_study"] > 0 for r in compared["rows"])
    averaged = load_card(out / "fold-average" / "fold-average.json")
    assert averaged.operating_point == final.operating_point and averaged.sha256 != final.sha256
    fold_tensors = [load_file(str(out / f"fold{k}" / "tiny.safetensors")) for k in (1, 2)]
    name = next(n for n, t in fold_tensors[0].items() if t.is_floating_point() and not torch.equal(t, fold_tensors[1][n]))
    mean = (fold_tensors[0][name] + fold_tensors[1][name]) / 2
    assert torch.allclose(load_file(str(out / "fold-average" / "fold-average.safetensors"))[name], mean, atol=1e-6)
    # a second run reuses every trained fold
    before = (out / "fold1" / "tiny.safetensors").stat().st_mtime_ns
    crossval_main(["--config", str(preset), "--data", str(wholebody), "--data", str(crops), "--out", str(out),
                   "--folds", "2", "--threads", "1"])
    assert (out / "fold1" / "tiny.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_train_and_evaluate_say_which_format_they_read(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    wholebody, crops, preset = folders
    train = subprocess.run(
        [sys.executable, "-c", "from dicomnode.cli import main; main()", "train", "--config", str(preset), "--data", str(wholebody),
         "--data", str(crops), "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert train.returncode == 0, train.stderr
    assert "bs80k-wholebody format" in train.stderr and "crops (" in train.stderr
    for folder, expected in ((wholebody, "lesion sensitivity"), (crops, "crop auc")):
        evaluate = subprocess.run(
            [sys.executable, "-c", "from dicomnode.cli import main; main()", "evaluate", "--weights", str(tmp_path / "run" / "tiny.safetensors"),
             "--data", str(folder), "--out", str(tmp_path / f"ev-{folder.name}"), "--threads", "1"],
            capture_output=True, text=True, timeout=600,
        )
        assert evaluate.returncode == 0, evaluate.stderr
        assert f"bs80k-{'wholebody' if folder == wholebody else 'crops'} format" in evaluate.stderr
        assert expected in evaluate.stdout
        assert json.loads((tmp_path / f"ev-{folder.name}" / "bs80k.json").read_text())["format"].startswith("bs80k")


@pytest.mark.slow
def test_a_learning_curve_point_trains_on_a_share_of_each_folds_patients(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    wholebody, crops, preset = folders
    out = tmp_path / "cv-half"
    crossval_main(["--config", str(preset), "--data", str(wholebody), "--data", str(crops), "--out", str(out),
                   "--folds", "2", "--threads", "1", "--fraction", "0.5"])
    table = json.loads((out / "crossval.json").read_text())
    assert table["training_fraction"] == 0.5
    for number in (1, 2):
        card = load_card(out / f"fold{number}" / "tiny.json")
        held_out = set(card.training["held_out_patients"])
        trained = {p for p in json.loads((out / f"fold{number}" / "split.json").read_text())["train"] if p.startswith("0:")}
        assert card.training["training_fraction"] == 0.5 and not held_out & trained
        assert 1 <= len(trained) <= 2  # half of the 3 whole-body patients outside the fold, at least one
    assert table["folds"][0]["studies"] + table["folds"][1]["studies"] == 6  # every study still judged once
    with pytest.raises(SystemExit):
        crossval_main(["--config", str(preset), "--data", str(wholebody), "--out", str(out), "--fraction", "0.5", "--final"])
    full = tmp_path / "cv-full"
    crossval_main(["--config", str(preset), "--data", str(wholebody), "--data", str(crops), "--out", str(full),
                   "--folds", "2", "--threads", "1"])
    learningcurve_main([str(full), str(out), "--data", str(wholebody), "--data", str(crops), "--out", str(tmp_path / "curve")])
    curve = json.loads((tmp_path / "curve" / "learning-curve.json").read_text())
    assert [p["fraction"] for p in curve] == [0.5, 1.0] and all(p["folds"] == [1, 2] for p in curve)
    assert all(0 <= p["lesion_sensitivity"]["mean"] <= 1 and p["crop_auc"]["folds"] == 2 for p in curve)
    (full / "fold2" / "oof.npz").unlink()  # a run stopped before its second fold: no nested point left
    with pytest.raises(ValueError, match="1 finished fold"):
        learningcurve_main([str(full), str(out), "--data", str(wholebody), "--data", str(crops)])
    assert (tmp_path / "curve" / "learning-curve.png").stat().st_size > 10_000
    assert "| 50% |" in (tmp_path / "curve" / "learning-curve.md").read_text()
