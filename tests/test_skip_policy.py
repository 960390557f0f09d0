"""The CI skip policy (tests/skip_policy.py): a run with a skipped test fails in CI and passes
elsewhere; a test marked ``without_gpu`` runs on a CPU machine and is the only one allowed to skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TESTS = '''
import pytest

def test_runs():
    assert True

def test_skips_quietly():
    pytest.skip("a peer is missing")

@pytest.mark.without_gpu
def test_without_gpu():
    assert True
'''


def run_pytest(folder: Path, source: str, ci: str) -> subprocess.CompletedProcess:
    (folder / "test_sample.py").write_text(source)
    env = {**os.environ, "CI": ci}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
                           "-q", str(folder / "test_sample.py")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("ci", "code"), [("true", 1), ("", 0), ("false", 0)])
def test_a_skip_fails_the_run_in_ci_only(tmp_path: Path, ci: str, code: int) -> None:
    run = run_pytest(tmp_path, TESTS, ci)
    output = run.stdout + run.stderr
    assert run.returncode == code, output
    assert "2 passed, 1 skipped" in output, output
    listed = "test_sample.py::test_skips_quietly: Skipped: a peer is missing" in output
    assert listed == (code == 1), output


def test_only_without_gpu_tests_may_skip(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, TESTS.replace('pytest.skip("a peer is missing")', "pass"), "true")
    assert run.returncode == 0, run.stdout + run.stderr
