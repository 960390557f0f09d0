"""The comparison table: same split and overrides for every method, mean ± std over seeded runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_studies import write_labelled_studies
from train.compare import main

torch.set_num_threads(1)


@pytest.mark.slow
def test_reduced_comparison_of_unet_with_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_labelled_studies(tmp_path / "train", 8, seed=11)
    write_labelled_studies(tmp_path / "test", 3, seed=12)
    main(["--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out", str(tmp_path / "out"),
          "--preset", "unet", "--runs", "2", "--epochs", "1", "--lr", "3e-3", "--batch-size", "4",
          "--patch", "64"])
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    unet = table["methods"]["unet"]
    assert len(unet["runs"]) == 2 and unet["overrides"]["data.patch_rows"] == 64
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
