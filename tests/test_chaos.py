"""The chaos suite (benchmarks/chaos.py) at a small scale: every study acknowledged by C-STORE
success reaches the PACS although the node is SIGKILLed at random, the PACS is down for twice the
old export retry budget and the disk fills up (the last only where a tmpfs can be mounted: as root)."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import pytest

from tests.peers import dcmtk, require

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
_spec = importlib.util.spec_from_file_location("chaos", _PATH)
chaos = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = chaos  # dataclasses look their module up there
_spec.loader.exec_module(chaos)

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    dcmtk("storescu")
    dcmtk("storescp")
    return chaos.synthesize(tmp_path_factory.mktemp("studies"), 5, 17)


def arguments(*extra: str):
    return chaos.parser().parse_args(["--weights", "threshold", "--kill-every", "5", "--gap", "0.8",
                                      "--full-for", "6", "--other-studies", "5", "--timeout", "240", *extra])


@pytest.mark.parametrize("scenario", ["kills", "outage", "disk"])
def test_nothing_acknowledged_is_lost(scenario, studies, tmp_path, capsys):
    if scenario == "disk":
        require(os.geteuid() == 0, "root (the disk scenario mounts a tmpfs)", "run the tests as root, as CI does")
    args = arguments("--kills", "3")
    row = chaos.run_scenario(scenario, args, tmp_path, studies, random.Random(17))
    with capsys.disabled():
        print("\n" + chaos.render([row]))
    assert row.disturbance != "skipped", row.note
    assert row.acknowledged == len(studies)  # the camera keeps sending until each study is taken
    assert row.lost == 0 and row.delivered == row.acknowledged
    assert row.failed_jobs == 0
    if scenario == "disk":
        assert not row.note.startswith("0 "), "the full disk refused nothing: the scenario did not bite"


def test_the_outage_outlasts_the_old_retry_budget():
    """10 attempts at 0.5 s doubling to at most 4 s: 0.5 + 1 + 2 + 4 × 6 = 27.5 s; the default
    outage is twice that."""
    assert chaos.old_retry_budget() == 27.5
    assert chaos.old_retry_budget(5, 600) == 1835  # the defaults: about 30 minutes
