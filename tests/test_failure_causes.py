"""Export failures say their cause (issue 28): an untrusted certificate is "TLS certificate" with the
verification error, in the export row, ``dicomnode status`` and ``/metrics``; a closed port is
"connection refused"; and pynetdicom's two ERROR lines per failed connect are not logged."""

from __future__ import annotations

import logging
import socket

import pytest
from sqlalchemy import select

from dicomnode.dicom.peers import TLSClient
from dicomnode.dicom.scu import (
    CONNECTION_REFUSED,
    TIMEOUT,
    TLS_CERTIFICATE,
    echo,
    parse_peer,
)
from dicomnode.ops.http import MonitoringServer
from dicomnode.ops.status import collect, render
from dicomnode.store.models import Export
from tests.peers import free_port
from tests.processing_helpers import threshold_segmenter  # noqa: F401 (the "segmenter" fixture)
from tests.receiver_helpers import running_node
from tests.test_export import POLICY, node  # noqa: F401 (the "node" fixture: results in the outbox)
from tests.test_http import get, metric, samples
from tests.test_scp import _certificates

pytestmark = pytest.mark.network


def _tls_node_and_untrusting_peer(tmp_path):
    """A TLS receiver whose certificate is signed by one CA, and a peer that trusts another."""
    ours = _certificates(tmp_path / "ours")
    foreign = _certificates(tmp_path / "foreign")
    tls = {"cert": str(ours["server.crt"]), "key": str(ours["server.key"])}
    return tls, TLSClient(ca=foreign["ca.crt"])


def test_an_untrusted_certificate_is_named_as_the_cause(tmp_path, caplog) -> None:
    tls, untrusting = _tls_node_and_untrusting_peer(tmp_path)
    with running_node(tmp_path, node={"tls": tls}) as running, caplog.at_level(logging.INFO):
        peer = parse_peer(f"127.0.0.1:{running.port}", "DICOMNODE").model_copy(update={"tls": untrusting})
        result = echo(peer, "CAMERA", timeout=5)
    assert not result.ok
    assert result.status == TLS_CERTIFICATE
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail and "certificate" in result.detail
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom.transport") and r.levelno >= logging.ERROR]


def test_a_closed_port_is_connection_refused_without_library_errors(caplog) -> None:
    with caplog.at_level(logging.INFO):
        result = echo(parse_peer(f"127.0.0.1:{free_port()}", "NOBODY"), "CAMERA", timeout=3)
    assert (result.ok, result.status) == (False, CONNECTION_REFUSED)
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.ERROR]


def test_a_peer_that_never_answers_the_association_is_a_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP (the backlog), says nothing
        result = echo(parse_peer(f"127.0.0.1:{silent.getsockname()[1]}", "SILENT"), "CAMERA", timeout=2)
    assert (result.ok, result.status) == (False, TIMEOUT)
    assert "ACSE timeout" in result.detail


def test_export_to_an_untrusted_destination_shows_the_cause_in_status_and_metrics(node, tmp_path) -> None:  # noqa: F811
    from dicomnode.dicom.peers import Destination
    from dicomnode.pipeline.export import Exporter

    database, spool, process = node
    process(["PACS"], studies=1)
    tls, untrusting = _tls_node_and_untrusting_peer(tmp_path)
    with running_node(tmp_path / "pacs", node={"tls": tls, "ae_title": "PACS"}) as pacs:
        target = Destination(name="PACS", host="127.0.0.1", port=pacs.port, ae_title="PACS", tls=untrusting)
        assert Exporter(database, spool, [target], "DICOMNODE", POLICY, timeout=5).run_once()
    with database.session() as session:
        rows = session.scalars(select(Export)).all()
    assert {row.last_status for row in rows} == {TLS_CERTIFICATE}
    assert all("CERTIFICATE_VERIFY_FAILED" in row.last_error for row in rows)
    report = collect(database)
    (backing_off,) = report["backing_off"]
    assert backing_off["last_status"] == TLS_CERTIFICATE
    assert "last answer TLS certificate (" in render(report) and "CERTIFICATE_VERIFY_FAILED" in render(report)
    server = MonitoringServer(database, "127.0.0.1", free_port()).start()
    try:
        _, _, body = get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert metric(samples(body), "dicomnode_export_failing", destination="PACS", cause=TLS_CERTIFICATE) == len(rows)
