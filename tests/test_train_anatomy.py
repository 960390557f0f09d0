"""`dicomnode train` is the one training entry point: an anatomy-map preset trains the anatomy map
(docs/training.md, "Anatomy map") and exports a card of its task, with the command's overrides."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.segmentation.modelcard import ANATOMY_MAP, load_card


def test_an_anatomy_preset_trains_the_anatomy_map_through_dicomnode_train(tmp_path: Path) -> None:
    preset = tmp_path / "tiny-map.toml"
    preset.write_text('name = "tiny-map"\ntask = "anatomy-map"\nstudies = 2\nvalidation_studies = 1\n'
                      'epochs = 1\nbatch_size = 2\nwidth = 4\nthreads = 1\n')
    run = CliRunner().invoke(app, ["train", "--config", str(preset), "--out", str(tmp_path / "out"), "--epochs", "2"])
    assert run.exit_code == 0, run.output
    card = load_card(tmp_path / "out" / "tiny-map.json")
    assert card.task == ANATOMY_MAP and card.network == "anatomy"
    assert [entry["epoch"] for entry in card.training["history"]] == [0, 1]  # --epochs 2 over the preset's 1
    assert (tmp_path / "out" / "work" / "checkpoint.pt").is_file()


def test_presets_of_different_tasks_are_not_mixed_in_one_run(tmp_path: Path) -> None:
    presets = Path(__file__).resolve().parents[1] / "config" / "train"
    run = CliRunner().invoke(app, ["train", "--config", str(presets / "anatomy.toml"),
                                   "--config", str(presets / "unet.toml"), "--out", str(tmp_path)])
    assert run.exit_code == 2 and "one preset per run, or SPECT/CT presets only" in run.output
