"""The README's two commands work as written (README.md, "Two commands"), so the README cannot drift
from what works: the demo command runs from a fresh clone in a fresh virtualenv, `.ci/run` calls the
test command, and the promise about missing peers (README.md, "The external parts") is what
``tests/peers.py`` does.

The slow test is offline: its virtualenv sees the packages of the Python running the tests (torch
among them, the CPU build where that is what is installed) and pip is told not to use an index, so a
missing package fails the test instead of being downloaded. The one thing the demo's steps install
that the outer environment does not lend is the build backend (pyproject.toml ``[build-system]``,
installed into the new virtualenv before the project is built without isolation): its wheels are in
``build/wheelhouse``, which `make test` (``scripts/setup.sh python test``) downloads beforehand.
"""

from __future__ import annotations

import os
import re
import shlex
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import require

REPO = Path(__file__).resolve().parents[1]
#: Where ``scripts/setup.sh python test`` downloads the build backend's wheels (its WHEELHOUSE).
WHEELHOUSE = REPO / "build" / "wheelhouse"


@dataclass(frozen=True)
class Commands:
    demo: str
    test: str


def readme_commands(readme: str) -> Commands:
    """The two commands of the README's "Two commands" section: the lines of its first ``bash``
    block, without their comments; the one that names ``demo`` and the one that names ``test``."""
    section = re.search(r"^## Two commands\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, 'README.md has no "## Two commands" section'
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, 'README.md\'s "Two commands" section has no ```bash block'
    lines = [shlex.join(shlex.split(line, comments=True)) for line in block.group(1).splitlines()]
    lines = [line for line in lines if line]
    assert len(lines) == 2, f"expected two commands in README.md's block, found {lines}"
    by_name = {name: [line for line in lines if name in shlex.split(line)] for name in ("demo", "test")}
    assert all(len(found) == 1 for found in by_name.values()), f"one demo and one test command: {lines}"
    return Commands(demo=by_name["demo"][0], test=by_name["test"][0])


def script_commands(script: str) -> list[str]:
    """The command lines of a shell script, comments and blank lines left out, normalised as
    :func:`readme_commands` normalises the README's."""
    commands = []
    for line in script.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a quote that spans lines: not a simple command line
            continue
        if words:
            commands.append(shlex.join(words))
    return commands


def test_readme_commands_are_parsed_from_the_block():
    readme = "# x\n\n## Two commands\n\ntext\n\n```bash\nmake demo    # 1 min\nmake test  # 9 min\n```\n\n## Next\n"
    assert readme_commands(readme) == Commands(demo="make demo", test="make test")
    with pytest.raises(AssertionError, match="two commands"):
        readme_commands(readme.replace("make test  # 9 min\n", ""))


def test_ci_runs_the_readme_test_command():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands.test in script_commands((REPO / ".ci" / "run").read_text()), (
        f".ci/run does not run the README's test command {commands.test!r}"
    )
    # Both are targets that make knows (a dry run prints their recipes and runs nothing).
    for command in (commands.demo, commands.test):
        words = shlex.split(command)
        assert words[0] == "make", f"README command {command!r} is not a make target"
        dry = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert "scripts/setup.sh" in dry.stdout


def test_a_missing_peer_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch):
    require(True, "a present peer", "nothing to install")  # present: nothing happens
    for unset in ("", "0", "false"):
        monkeypatch.setenv("CI", unset)
        with pytest.raises(pytest.skip.Exception, match=r"^Orthanc is not available here \(apt-get install orthanc\)$"):
            require(False, "Orthanc", "apt-get install orthanc")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require(False, "Orthanc", "apt-get install orthanc")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Orthanc is not available here .*CI requires it"):
        require(False, "Orthanc", "apt-get install orthanc")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # outside pytest (the benchmarks): an error
    with pytest.raises(RuntimeError, match="Orthanc is not available here"):
        require(False, "Orthanc", "apt-get install orthanc")


_NOT_A_NEW_USERS = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES",
                    "PYTHON", "VENV", "TORCH", "TORCH_BUILD", "TORCH_INDEX", "SETUP_STARTED", "DEMO_ARGS",
                    "PYTEST_ARGS"}


def _offline_virtualenv(venv: Path) -> None:
    """A fresh virtualenv that sees this Python's installed packages: ``--system-site-packages``,
    and, when the tests themselves run in a virtualenv (`make test` makes one), that virtualenv's
    site-packages too, after the new virtualenv's own (so the clone's editable install wins).
    ``--without-pip``: this Python's pip is used (a virtualenv's own would need an index)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=300)
    if sys.prefix != sys.base_prefix:
        purelib = Path(subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip())
        ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
        (purelib / "zz-dicomnode-test-outer-site.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(ours)))


@pytest.mark.slow
def test_the_readme_demo_command_runs_from_a_fresh_clone(tmp_path: Path):
    require((REPO / ".git").exists(), "a git checkout to clone", "git clone the repository")
    require(any(WHEELHOUSE.glob("*.whl")), f"the build backend's wheels in {WHEELHOUSE}",
            "scripts/setup.sh python test downloads them")
    clone = tmp_path / "dicomnode"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    commands = readme_commands((clone / "README.md").read_text())
    assert commands.test in script_commands((clone / ".ci" / "run").read_text())

    missing = subprocess.run([str(clone / "scripts" / "setup.sh"), "missing", "demo"], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
    require(not missing, f"Debian packages {' '.join(missing)}", f"apt-get install {' '.join(missing)}")
    # The Makefile's virtualenv, made here beforehand so that it can see this Python's packages.
    _offline_virtualenv(clone / ".venv")

    # A new user's environment: none of the variables that `make test` (which runs this test) passes
    # on, its command-line overrides (MAKEFLAGS) included, nor an activated virtualenv.
    env = {key: value for key, value in os.environ.items()
           if key not in _NOT_A_NEW_USERS and not key.startswith("PYTEST_")}
    outer_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != outer_bin)
    env["PIP_NO_INDEX"] = "1"  # offline: what is not installed here fails, nothing is downloaded
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(WHEELHOUSE), env.get("PIP_FIND_LINKS", "")]))
    run = subprocess.run(["bash", "-c", commands.demo], cwd=clone, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=1200)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{commands.demo!r} failed in a fresh clone:\n{output[-6000:]}"
    # The clone's code was installed and ran, on the torch of this machine.
    assert f"dicomnode from {clone / 'dicomnode'}" in output, output[-6000:]
    assert len(re.findall(r"study \d/3: results at the PACS after", output)) == 3, output[-6000:]
    assert "3 simulated studies" in output, output[-6000:]
