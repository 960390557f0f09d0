"""Training presets: the committed ones validate, bad ones fail with messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.train.config import PresetError, load_config

PRESETS = Path(__file__).resolve().parents[1] / "config" / "train"


@pytest.mark.parametrize("name", ["unet", "msanet", "mams", "semisup"])
def test_committed_presets_validate(name: str) -> None:
    config = load_config(PRESETS / f"{name}.toml")
    assert config.name == name
    assert config.model.network == name
    assert config.adversarial.enabled == (name == "msanet")
    assert config.semisup.enabled == (name == "semisup")


def test_semisup_defaults_follow_paper_004() -> None:
    config = load_config(PRESETS / "semisup.toml")
    assert config.semisup.labelled_fraction == pytest.approx(0.37)


def test_overrides_apply(tmp_path: Path) -> None:
    config = load_config(PRESETS / "unet.toml", **{"optim.epochs": 3, "optim.batch_size": 2})
    assert (config.optim.epochs, config.optim.batch_size) == (3, 2)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('name = "x"\n[optim]\nepochs = 0\n', "optim.epochs"),
        ('name = "x"\n[optim]\nepochz = 3\n', "optim.epochz"),
        ('name = "x"\n[data]\ntrain_fraction = 0.9\n', "sum to 1"),
        ('name = "x"\n[adversarial]\nenabled = true\n[semisup]\nenabled = true\n', "both"),
        ('name = "x"\n[model\n', "not valid TOML"),
    ],
)
def test_bad_presets_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=fragment.replace(".", r"\.")):
        load_config(path)


def test_missing_preset(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_preprocessing_keys_are_checked_and_whole_view_is_none(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('name = "p"\n[preprocessing]\nwindow = "whole-view"\naggregation = "add"\n')
    config = load_config(path)
    assert config.preprocessing_config.window is None
    assert config.preprocessing_config.in_channels == 1
    path.write_text('name = "p"\n[preprocessing]\nwindw = 128\n')
    with pytest.raises(PresetError, match="windw"):
        load_config(path)


def test_every_committed_preset_is_read_by_the_one_reader_as_its_task() -> None:
    """docs/segmentation.md, "Model cards": a preset's ``task`` picks its schema and trainer."""
    from dicomnode.segmentation.modelcard import TASKS
    from dicomnode.train.config import AnatomyPreset, TrainConfig, VolumePreset, load_preset

    schema = {"planar-lesions": TrainConfig, "anatomy-map": AnatomyPreset, "spectct-classes": VolumePreset}
    seen = set()
    for path in sorted(PRESETS.glob("*.toml")):
        declared = next(line.split('"')[1] for line in path.read_text().splitlines() if line.startswith("task = "))
        preset = load_preset(path)
        assert declared in TASKS and preset.task == declared and isinstance(preset, schema[declared]), path.name
        seen.add(declared)
    assert seen == set(schema)


def test_a_preset_of_another_task_or_an_unknown_task_is_refused(tmp_path: Path) -> None:
    from dicomnode.train.config import load_preset

    with pytest.raises(PresetError, match="trains task 'anatomy-map', not 'planar-lesions'"):
        load_config(PRESETS / "anatomy.toml")
    unknown = tmp_path / "x.toml"
    unknown.write_text('name = "x"\ntask = "bone-age"\n')
    with pytest.raises(PresetError, match="task 'bone-age' is not one of"):
        load_preset(unknown)
    typo = tmp_path / "y.toml"
    typo.write_text('name = "y"\ntask = "anatomy-map"\nepochz = 3\n')
    with pytest.raises(PresetError, match="epochz"):
        load_preset(typo)
