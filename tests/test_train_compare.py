"""The comparison table: same split and overrides for every method, mean ± std over seeded runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_studies import write_labelled_studies
from dicomnode.train.compare import main

torch.set_num_threads(1)


def arguments(tmp_path: Path, *, runs: int, lr: str = "3e-3") -> list[str]:
    return ["--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out", str(tmp_path / "out"),
            "--preset", "unet", "--runs", str(runs), "--epochs", "1", "--lr", lr, "--batch-size", "4",
            "--patch", "64"]


@pytest.mark.slow
def test_reduced_comparison_of_unet_with_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_labelled_studies(tmp_path / "train", 8, seed=11)
    write_labelled_studies(tmp_path / "test", 3, seed=12)
    main(arguments(tmp_path, runs=2))
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    unet = table["methods"]["unet"]
    assert len(unet["runs"]) == 2 and unet["overrides"]["data.patch_rows"] == 64 and unet["seeds"] == [42, 43]
    seeds = [json.loads((tmp_path / "out" / "unet" / f"run{k}" / "unet.json").read_text())["training"]["preset"]["optim"]["seed"]
             for k in (1, 2)]
    assert seeds == [42, 43]
    dscs = [run["pixel_lesion_images"]["dsc"]["mean"] for run in unet["runs"]]
    assert unet["across_runs"]["dsc"]["mean"] == pytest.approx(sum(dscs) / 2)
    assert table["test_studies"] == 3
    if "threshold" in table["methods"]:
        assert len(table["methods"]["threshold"]["runs"]) == 1
    printed = capsys.readouterr().out
    assert "| unet | 2 |" in printed and (tmp_path / "out" / "comparison.md").read_text() in printed


@pytest.mark.slow
def test_a_comparison_goes_on_where_it_stopped_and_retrains_what_changed(tmp_path: Path) -> None:
    write_labelled_studies(tmp_path / "train", 6, seed=13)
    write_labelled_studies(tmp_path / "test", 2, seed=14)
    main(arguments(tmp_path, runs=1))
    first = tmp_path / "out" / "unet" / "run1" / "unet.safetensors"
    trained = first.stat().st_mtime_ns

    main(arguments(tmp_path, runs=2))  # run 1 is reused, run 2 is trained
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert len(table["methods"]["unet"]["runs"]) == 2
    assert first.stat().st_mtime_ns == trained
    assert (tmp_path / "out" / "unet" / "run2" / "unet.safetensors").is_file()

    main(arguments(tmp_path, runs=1, lr="1e-3"))  # another learning rate: run 1 no longer matches
    assert first.stat().st_mtime_ns != trained
    card = json.loads((tmp_path / "out" / "unet" / "run1" / "unet.json").read_text())
    assert card["training"]["preset"]["optim"]["lr"] == pytest.approx(1e-3)
