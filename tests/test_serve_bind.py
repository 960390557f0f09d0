"""A port in use stops `dicomnode serve` at once with a message naming the listener, address and port,
before the model is loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("listener", ["dicom", "http"])
def test_a_port_in_use_is_named_before_the_model_loads(tmp_path: Path, listener: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]
        dicom, http = (taken, free) if listener == "dicom" else (free, taken)
        config = tmp_path / "node.toml"
        config.write_text(f'[node]\nhost = "127.0.0.1"\nport = {dicom}\n[http]\nhost = "127.0.0.1"\nport = {http}\n'
                          f'[storage]\nvar_dir = "{tmp_path / "var"}"\n')
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", "from dicomnode.cli import main; main()", "serve",
                                 "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    expected = "DICOM receiver ([node] host, port)" if listener == "dicom" else "HTTP monitoring ([http] host, port)"
    assert f"{expected}: cannot listen on 127.0.0.1:{taken}: Address already in use" in result.stderr
    assert "loaded dicomnode-" not in result.stderr  # the model was never loaded
    assert time.monotonic() - started < 60
