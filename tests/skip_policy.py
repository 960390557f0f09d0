"""No test skips quietly in CI: a pytest plugin (loaded by ``tests/conftest.py``).

In CI (the environment variable ``CI`` set, as ``.ci/run`` sets it) every peer is installed and
started, so a skipped test is a test that did not run and the run fails, with the skipped tests
listed. The one exception is a test that depends on the accelerator: one marked ``without_gpu``
(it checks what the node does on a machine without a CUDA GPU) skips on a machine that has one, and
is allowed to. No test needs a GPU to run: on the CPU machines CI uses, nothing is skipped at all.
Missing peers go through :func:`tests.peers.require`, which fails in CI by itself; this plugin also
catches a plain ``pytest.skip`` or ``skipif`` that slipped in.
"""

from __future__ import annotations

import os

import pytest

#: The marker of tests that skip on a machine with a CUDA GPU (the only skips CI allows).
WITHOUT_GPU = "without_gpu"


def in_ci() -> bool:
    """Whether ``CI`` is set to anything but ``""``, ``0``, ``false`` or ``no`` (as ``.ci/run`` does)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class SkipPolicy:
    """Collects the skipped tests that CI does not allow and fails the run for them."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker(WITHOUT_GPU) is not None:
            import torch

            if torch.cuda.is_available():
                pytest.skip("this machine has a CUDA GPU; the test checks a machine without one")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and WITHOUT_GPU not in report.keywords:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if in_ci() and self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if in_ci() and self.skipped:
            terminalreporter.section(f"{len(self.skipped)} skipped in CI, where only tests marked "
                                     f"{WITHOUT_GPU} may skip", red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.line(f"{nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{WITHOUT_GPU}: checks behaviour without a CUDA GPU; skips where one is")
    config.pluginmanager.register(SkipPolicy(), "dicomnode-skip-policy")
