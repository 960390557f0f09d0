"""The receiver against a real camera (dcmtk storescu): durability, index, duplicates, disk floor, concurrency."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import update

from dicomnode.store.models import Study, StudyState
from dicomnode.store.spool import sha256_hex
from dicomnode.synth.spectct.dicom import dose_report
from dicomnode.segmentation.scan import View
from tests.nm_factory import nm_study, phantom_counts
from tests.receiver_helpers import Node, running_node, storescu, write_files

pytestmark = pytest.mark.network


def small_study(layout: str, seed: int = 0, **kwargs) -> list[pydicom.Dataset]:
    """A small NM whole-body study (128 x 32) so that tests stay fast."""
    return nm_study(phantom_counts(rows=128, columns=32, seed=seed), layout=layout, **kwargs)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None (SQLite in the node's var dir) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


def test_camera_store_is_durable_and_indexed(tmp_path: Path, database_url: str | None) -> None:
    multiframe = small_study("multiframe", seed=1)
    split = small_study("split", seed=2)
    files = write_files(multiframe + split, tmp_path / "camera")
    with running_node(tmp_path, database_url) as node:
        run = storescu(node.port, files)
        assert run.returncode == 0, run.output
        assert run.statuses == [0x0000] * 3
        rows = {row.sop_instance_uid: row for row in node.instances()}
        assert set(rows) == {str(ds.SOPInstanceUID) for ds in multiframe + split}
        assert rows[multiframe[0].SOPInstanceUID].views == "anterior,posterior"
        assert sorted(rows[ds.SOPInstanceUID].views for ds in split) == ["anterior", "posterior"]
        for ds in multiframe + split:
            row = rows[ds.SOPInstanceUID]
            stored = node.spool.absolute(row.path).read_bytes()
            assert sha256_hex(stored) == row.sha256 and len(stored) == row.size
            assert row.path.startswith(f"instances/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/")
            again = pydicom.dcmread(node.spool.absolute(row.path))
            assert again.SOPInstanceUID == ds.SOPInstanceUID
            assert again.PixelData == ds.PixelData  # the pixels as sent, not re-encoded
            assert row.calling_ae == "CAMERA" and not row.superseded
        studies = node.studies()
        assert [s.study_instance_uid for s in studies] == [multiframe[0].StudyInstanceUID, split[0].StudyInstanceUID]
        assert all(s.state is StudyState.RECEIVING and s.version == 1 for s in studies)
        assert node.quarantined() == []
        assert list((node.spool.root / "tmp").iterdir()) == []


def test_patient_identifiers_are_logged_only_as_fields_the_log_handler_may_drop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = small_study("multiframe", seed=3)
    with caplog.at_level(logging.INFO, logger="dicomnode.pipeline.receiver"), running_node(tmp_path) as node:
        assert storescu(node.port, write_files(study, tmp_path / "camera")).statuses == [0x0000]
    (accepted,) = [entry for entry in caplog.records if "0x0000" in entry.getMessage()]
    assert (accepted.patient_id, accepted.accession_number) == (study[0].PatientID, study[0].AccessionNumber)
    assert study[0].PatientID not in accepted.getMessage()  # dicomnode.ops.logs decides whether it is shown


def _set_state(node: Node, state: StudyState) -> None:
    with node.database.session(write=True) as session:
        session.execute(update(Study).values(state=state))


def test_duplicates_are_idempotent_and_new_bytes_are_a_new_version(tmp_path: Path, database_url: str | None) -> None:
    (original,) = small_study("multiframe", seed=3)
    first = write_files([original], tmp_path / "v1")
    with running_node(tmp_path, database_url) as node:
        assert storescu(node.port, first).statuses == [0x0000]
        assert storescu(node.port, first).statuses == [0x0000]  # same bytes again: success, no-op
        assert len(node.instances()) == 1
        before = node.studies()[0]
        _set_state(node, StudyState.PROCESSED)

        original.ImageComments = "re-sent after correction"
        second = write_files([original], tmp_path / "v2")
        assert storescu(node.port, second).statuses == [0x0000]
        old, new = node.instances()
        assert old.superseded and not new.superseded and new.sha256 != old.sha256
        study = node.studies()[0]
        assert (study.version, study.state) == (2, StudyState.RECEIVING)  # processed again
        assert study.last_instance_at > before.last_instance_at

        original.ImageComments = "third version while still receiving"
        third = write_files([original], tmp_path / "v3")
        assert storescu(node.port, third).statuses == [0x0000]
        assert [row.superseded for row in node.instances()] == [True, True, False]
        assert node.studies()[0].version == 2  # no bump while nothing was processed yet
        for row in node.instances():  # every version's file is kept
            assert node.spool.absolute(row.path).exists()


def test_disk_floor_refuses_then_retry_succeeds(tmp_path: Path) -> None:
    files = write_files(small_study("split", seed=4), tmp_path / "camera")
    with running_node(tmp_path) as node:
        node.spool.min_free_bytes = node.spool.free_bytes() + (1 << 40)  # the floor above the free space
        run = storescu(node.port, files)
        assert run.statuses == [0xA700, 0xA700]
        assert node.instances() == []
        assert not any((node.spool.root / "instances").iterdir())  # nothing written
        assert not any((node.spool.root / "quarantine").iterdir())
        refusals = node.quarantined()
        assert [(q.status, q.path) for q in refusals] == [("0xA700", None)] * 2
        assert "free space" in refusals[0].reason

        node.spool.min_free_bytes = 0  # space freed: the camera's retry goes through
        assert storescu(node.port, files).statuses == [0x0000, 0x0000]
        assert len(node.instances()) == 2


def test_four_concurrent_senders_index_every_file_once(tmp_path: Path, database_url: str | None) -> None:
    shared = write_files(small_study("multiframe", seed=10), tmp_path / "shared")
    batches = []
    for sender in range(4):
        datasets = [ds for seed in range(3) for ds in small_study("split", seed=100 * sender + seed)]
        batches.append(write_files(datasets, tmp_path / f"camera{sender}") + shared)
    with running_node(tmp_path, database_url, node={"max_associations": 8}) as node:
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda files: storescu(node.port, files), batches))
        for run in runs:
            assert run.returncode == 0, run.output
            assert run.statuses == [0x0000] * 7
        rows = node.instances()
        uids = [row.sop_instance_uid for row in rows]
        expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for batch in batches for p in batch}
        assert len(uids) == len(set(uids)) == len(expected) == 25  # 4 x 6 unique + 1 shared, each once
        assert set(uids) == expected
        assert not any(row.superseded for row in rows)
        assert len(node.studies()) == 4 * 3 + 1
        assert node.quarantined() == []


def test_only_allowed_callers_may_associate(tmp_path: Path) -> None:
    files = write_files(small_study("split", seed=5)[:1], tmp_path / "camera")
    with running_node(tmp_path, node={"allowed_callers": ["CAMERA"]}) as node:
        intruder = storescu(node.port, files, calling_ae="INTRUDER")
        assert intruder.returncode != 0
        assert "Association Rejected" in intruder.output and "Calling AE Title Not Recognized" in intruder.output
        assert node.instances() == []
        wrong_called = storescu(node.port, files, called_ae="SOMEONE")
        assert "Called AE Title Not Recognized" in wrong_called.output
        assert storescu(node.port, files, calling_ae="CAMERA").statuses == [0x0000]
        assert len(node.instances()) == 1


def test_association_limit(tmp_path: Path) -> None:
    from pynetdicom.sop_class import Verification

    from dicomnode.dicom.scu import AssociationFailed, associate, echo, parse_peer

    with running_node(tmp_path, node={"max_associations": 1}) as node:
        peer = parse_peer(f"127.0.0.1:{node.port}", default_ae_title="DICOMNODE")
        with associate(peer, "CAMERA", [(Verification, ["1.2.840.10008.1.2"])]) as held:
            assert held.is_established
            with pytest.raises(AssociationFailed) as refused:
                with associate(peer, "CAMERA2", [(Verification, ["1.2.840.10008.1.2"])]):
                    pass
            assert refused.value.permanent is False and "transient" in refused.value.status
            assert "limit" in refused.value.detail.lower()
        deadline = time.monotonic() + 10  # the released association's thread ends asynchronously
        while node.receiver.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        assert echo(peer, "CAMERA").ok  # released: room again


def test_accepted_connections_send_without_nagle_delay(tmp_path: Path) -> None:
    """TCP_NODELAY on every accepted connection (set on EVT_CONN_OPEN, pynetdicom's public events)."""
    from pynetdicom.sop_class import Verification

    from dicomnode.dicom.scu import associate, parse_peer

    with running_node(tmp_path) as node:
        peer = parse_peer(f"127.0.0.1:{node.port}", default_ae_title="DICOMNODE")
        with associate(peer, "CAMERA", [(Verification, ["1.2.840.10008.1.2"])]):
            (accepted,) = node.receiver.ae.active_associations
            assert accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_every_standard_storage_class_is_stored_and_a_refused_context_is_logged_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A workstation sends more than NM images with an exam: an MR image and an X-Ray Radiation Dose SR
    (dcmtk storescu in one association, as the real CT exam) are stored with their kinds; a private
    SOP class cannot be negotiated (PS3.4 B.2.3; dcmtk refuses to send it, so pynetdicom proposes it):
    the receiver logs the refused context and records it, so ``dicomnode status`` counts it."""
    from pydicom.uid import ExplicitVRLittleEndian

    from dicomnode.dicom.scu import associate, parse_peer
    from dicomnode.ops.status import collect, render

    private_class = "1.2.826.0.1.3680043.9.7433.99.1"
    (mr,) = small_study("multiframe", seed=6)
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    mr.Modality = "MR"
    files = write_files([mr, dose_report(mr)], tmp_path / "other")
    with caplog.at_level(logging.WARNING, logger="dicomnode.pipeline.receiver"), running_node(tmp_path) as node:
        run = storescu(node.port, files)
        assert run.statuses == [0x0000, 0x0000]
        assert sorted(i.kind for i in node.instances()) == ["dose-report", "other-image"]
        peer = parse_peer(f"127.0.0.1:{node.port}", default_ae_title="DICOMNODE")
        with associate(peer, "WORKSTATION", [(private_class, [ExplicitVRLittleEndian]),
                                             (mr.SOPClassUID, [ExplicitVRLittleEndian])]) as assoc:
            assert [c.abstract_syntax for c in assoc.accepted_contexts] == [mr.SOPClassUID]
        report = collect(node.database)
    assert report["instances"] == {"dose-report": 1, "other-image": 1}
    assert report["refused"]["presentation_contexts"] == 1
    (refused,) = report["refused_contexts"]
    assert private_class in refused["reason"] and refused["calling_ae"] == "WORKSTATION"
    assert "presentation contexts 1" in render(report)
    assert any("presentation context refused" in r.getMessage() for r in caplog.records)


def _certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=dicomnode test CA")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext")
    return {name: directory / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_tls_and_client_certificates(tmp_path: Path) -> None:
    from dicomnode.dicom.peers import TLSClient
    from dicomnode.dicom.scu import echo, parse_peer, send_files

    certs = _certificates(tmp_path / "tls")
    tls = {"cert": str(certs["server.crt"]), "key": str(certs["server.key"]), "ca": str(certs["ca.crt"]),
           "require_client_cert": True}
    files = write_files(small_study("split", seed=7)[:1], tmp_path / "camera")
    with running_node(tmp_path, node={"tls": tls}) as node:
        plain = parse_peer(f"127.0.0.1:{node.port}", default_ae_title="DICOMNODE")
        assert not echo(plain, "CAMERA", timeout=5).ok  # no TLS: no association
        no_client_cert = plain.model_copy(update={"tls": TLSClient(ca=certs["ca.crt"])})
        assert not echo(no_client_cert, "CAMERA", timeout=5).ok  # mutual TLS required
        with_cert = plain.model_copy(update={"tls": TLSClient(ca=certs["ca.crt"], cert=certs["client.crt"],
                                                              key=certs["client.key"])})
        assert echo(with_cert, "CAMERA", timeout=5).ok
        (result,) = send_files(files, with_cert, "CAMERA")
        assert result.status == 0x0000
        assert [row.sop_instance_uid for row in node.instances()] == [result.sop_instance_uid]


def test_pixels_survive_the_round_trip(tmp_path: Path) -> None:
    """What the worker will read back is what the camera sent (signed pixels, rescale kept)."""
    counts = phantom_counts(rows=64, columns=16, seed=8)
    datasets = nm_study(counts, layout="split", signed=True)
    files = write_files(datasets, tmp_path / "camera")
    with running_node(tmp_path) as node:
        assert storescu(node.port, files).statuses == [0x0000, 0x0000]
        for ds, row in zip(datasets, node.instances(), strict=True):
            stored = pydicom.dcmread(node.spool.absolute(row.path))
            assert np.array_equal(stored.pixel_array, ds.pixel_array)
            assert stored.PixelRepresentation == 1
        assert {row.views for row in node.instances()} == {View.ANTERIOR.value, View.POSTERIOR.value}


def test_the_error_comment_leads_with_the_reason_and_ends_at_a_word() -> None:
    from dicomnode.pipeline.receiver import ERROR_COMMENT_LENGTH, error_comment

    uid = "1.2.826.0.1.3680043.8.498.95013500403007476651160269675803131170"
    comment = error_comment(f"instance {uid} frame 2: Pixel Spacing (0028,0030) is missing or zero")
    assert comment == "Pixel Spacing (0028,0030) is missing or zero"
    long = error_comment("Affected SOP Instance UID '1.2.x' is not a UID (digits and dots, no leading zeros, at most 64)")
    assert len(long) <= ERROR_COMMENT_LENGTH and long.endswith("...") and long.startswith("Affected SOP")
    assert long[:-3].split()[-1] in "Affected SOP Instance UID '1.2.x' is not a UID (digits and dots".split()
    assert error_comment("bad \\ value\n\x1b") == "bad ? value??"


def test_an_unexpected_error_is_a_processing_failure_with_the_bytes_kept(tmp_path: Path, monkeypatch) -> None:
    """A fault of the node (here an index that raises what nothing expects) is 0x0110, which a sender
    may retry, not 0xC000 'cannot understand', which blames the data; the bytes go to quarantine."""
    import dicomnode.pipeline.receiver as receiver

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not the data")

    monkeypatch.setattr(receiver, "ingest", broken)
    files = write_files(small_study("multiframe", seed=8), tmp_path / "study")
    with running_node(tmp_path) as node:
        run = storescu(node.port, files)
        (refused,) = node.quarantined()
    assert run.statuses == [0x0110]
    assert refused.status == "0x0110" and refused.path is not None
    assert refused.reason.startswith("unexpected error: RuntimeError")
