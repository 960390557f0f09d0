"""The command line's help texts say what they mean (no markup swallowing TOML section names, flags
shown as flags) and its messages count correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app

COMMANDS = ["synth", "train", "evaluate", "echo", "send", "serve", "worker", "status", "retry", "segment", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_as_flags_and_keeps_brackets(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "(default:  " not in result.output  # a "[section]" eaten as markup leaves a double space


def test_segment_help_names_the_configuration_keys() -> None:
    output = CliRunner().invoke(app, ["segment", "--help"], terminal_width=120).output
    assert "[model] weights" in output and "[model] device" in output


def test_synth_counts_in_words(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "one"), "--studies", "1", "--rows", "256",
                                      "--columns", "64", "--spacing", "9.04"])
    assert result.exit_code == 0, result.output
    assert f"wrote 1 study to {tmp_path / 'one'}" in result.output


def test_synth_offers_every_vendor_profile():
    from dicomnode.synth.vendors import VENDORS

    refused = CliRunner().invoke(app, ["synth", "out", "--vendor", "toshiba"], terminal_width=400)
    assert refused.exit_code == 2
    assert ", ".join([*VENDORS, "mixed"]) in refused.output

def test_learn_folds_override_is_checked_like_the_config_key(tmp_path: Path) -> None:
    """``dicomnode learn --folds 1`` is refused before anything is opened, as ``[learn] folds = 1`` is."""
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\n')
    refused = CliRunner().invoke(app, ["learn", "--config", str(config), "--folds", "1"], terminal_width=400)
    assert refused.exit_code == 2
    assert "--folds" in refused.output and "at least 2" in refused.output
    assert not (tmp_path / "var").exists()
