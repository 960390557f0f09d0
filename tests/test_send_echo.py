"""``dicomnode echo`` and ``dicomnode send`` against real peers (dcmtk storescp, Orthanc, our receiver)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.dicom.scu import parse_peer
from tests.nm_factory import nm_study, phantom_counts
from tests.peers import Orthanc, StoreSCP, free_port
from tests.receiver_helpers import NODE_AE, running_node, write_files

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DICOMNODE_"):
            monkeypatch.delenv(name)


def _study(seed: int, layout: str = "split") -> list[pydicom.Dataset]:
    return nm_study(phantom_counts(rows=64, columns=16, seed=seed), layout=layout)


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_send_folder_to_storescp_recurses_and_reports_each_file(tmp_path: Path, storescp: StoreSCP) -> None:
    first = write_files(_study(1), tmp_path / "in" / "a")
    second = write_files(_study(2, "multiframe"), tmp_path / "in" / "b" / "deeper")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    result = _run("send", str(tmp_path / "in"), "--to", f"127.0.0.1:{storescp.port}:{storescp.aet}")
    assert result.exit_code == 0, result.output
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in first + second}
    assert storescp.received_sop_instance_uids() == sent
    lines = result.output.splitlines()
    assert sum(" 0x0000 " in line for line in lines) == 3
    assert any("skipped" in line and "notes.txt" in line for line in lines)
    assert lines[-1].startswith("3 stored, 0 failed, 1 skipped")


def test_send_to_orthanc(tmp_path: Path, orthanc: Orthanc) -> None:
    files = write_files(_study(3, "multiframe"), tmp_path / "in")
    result = _run("send", *map(str, files), "--to", f"127.0.0.1:{orthanc.port}:{orthanc.aet}")
    assert result.exit_code == 0, result.output
    assert orthanc.sop_instance_uids() == {pydicom.dcmread(files[0]).SOPInstanceUID}


def test_send_exits_non_zero_when_a_file_is_refused(tmp_path: Path) -> None:
    good = write_files(_study(4), tmp_path / "good")
    bad_ds = _study(5, "multiframe")[0]
    bad_ds.Rows = 63  # Pixel Data no longer matches Rows x Columns: the receiver refuses it
    bad = write_files([bad_ds], tmp_path / "bad")
    not_dicom = tmp_path / "named.txt"
    not_dicom.write_text("hello")
    with running_node(tmp_path) as node:
        result = _run("send", *map(str, good + bad), str(not_dicom), "--to", f"127.0.0.1:{node.port}")
        assert result.exit_code == 1
        assert "0xA900" in result.output and "Pixel Data" in result.output  # status and Error Comment
        assert "named.txt: not a DICOM file" in result.output
        assert "2 stored, 2 failed, 0 skipped" in result.output
        assert len(node.instances()) == 2


def test_send_without_a_listener_fails_every_file(tmp_path: Path) -> None:
    files = write_files(_study(6), tmp_path / "in")
    result = _run("send", str(tmp_path / "in"), "--to", f"127.0.0.1:{free_port()}:NOBODY", "--timeout", "3")
    assert result.exit_code == 1
    assert result.output.count("not sent") == len(files)
    assert "connection refused" in result.output


@pytest.mark.parametrize("to", ["localhost", "host:port", "host:70000", ":104", "h:104:" + "A" * 17, "[::1]104"])
def test_malformed_peers_are_refused(to: str) -> None:
    result = _run("echo", "--to", to)
    assert result.exit_code == 2
    assert "--to" in result.output


def test_parse_peer_forms() -> None:
    assert parse_peer("pacs:104:PACS", "ME").model_dump(include={"host", "port", "ae_title"}) == {
        "host": "pacs", "port": 104, "ae_title": "PACS"}
    assert parse_peer("[::1]:11112", "ME").model_dump(include={"host", "port", "ae_title"}) == {
        "host": "::1", "port": 11112, "ae_title": "ME"}


def test_echo_defaults_to_destinations_and_the_node_itself(tmp_path: Path, storescp: StoreSCP,
                                                           orthanc: Orthanc) -> None:
    with running_node(tmp_path) as node:
        config = _config(tmp_path, f"""
[node]
ae_title = "{NODE_AE}"
host = "0.0.0.0"
port = {node.port}
[[destinations]]
name = "storescp"
host = "127.0.0.1"
port = {storescp.port}
ae_title = "{storescp.aet}"
[[destinations]]
name = "orthanc"
host = "127.0.0.1"
port = {orthanc.port}
ae_title = "{orthanc.aet}"
""")
        result = _run("echo", "--config", str(config))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()  # the report; library log lines go to stderr
        assert [line.split()[1] for line in lines] == ["storescp", "orthanc", "this-node"], result.output
        assert all(line.startswith("ok") and "0x0000" in line for line in lines)

        orthanc.stop()  # a destination down: reported, exit 1, the others still checked
        result = _run("echo", "--config", str(config), "--timeout", "3")
        assert result.exit_code == 1
        assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok", "FAIL", "ok"], result.output


def test_echo_reports_rejection(tmp_path: Path) -> None:
    with running_node(tmp_path, node={"allowed_callers": ["CAMERA"]}) as node:
        refused = _run("echo", "--to", f"127.0.0.1:{node.port}:{NODE_AE}", "--aet", "STRANGER")
        assert refused.exit_code == 1 and "association rejected (permanent)" in refused.output
        allowed = _run("echo", "--to", f"127.0.0.1:{node.port}:{NODE_AE}", "--aet", "CAMERA")
        assert allowed.exit_code == 0, allowed.output
        bad_aet = _run("echo", "--to", f"127.0.0.1:{node.port}", "--aet", "BACK\\SLASH")
        assert bad_aet.exit_code == 2
