"""Operations: ``/healthz`` and Prometheus ``/metrics`` (dicomnode.ops.http), and the JSON-lines log of a
real ``dicomnode serve`` run (no patient name or ID in it).

Metric values are read with prometheus_client's own text-format parser, as Prometheus would."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.ops.http import MonitoringServer
from dicomnode.store.models import Export, ExportAttempt, ExportState, Job, JobState, ResultKind, ResultObject, utcnow
from dicomnode.synth import write_studies
from tests.peers import free_port, wait_for_port
from tests.processing_helpers import (
    NodeProcess,
    add_study,
    pacs_objects,
    postgres_database,
    sqlite_database,
    status_report,
    storescu,
    wait_until,
    write_node_config,
)


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


# -- metrics computed from database rows ------------------------------------------------------------


def add_finished_job(database, seconds: float, waited: float, state: JobState = JobState.DONE) -> int:
    study_id = add_study(database)
    finished = utcnow()
    with database.session(write=True) as session:
        job = Job(study_id=study_id, study_version=1, state=state, attempts=1,
                  created_at=finished - timedelta(seconds=seconds + waited),
                  started_at=finished - timedelta(seconds=seconds), finished_at=finished)
        session.add(job)
        session.flush()
        return job.id


def add_export(database, job_id: int, destination: str, state: ExportState, attempts: int) -> None:
    with database.session(write=True) as session:
        result = ResultObject(job_id=job_id, kind=ResultKind.SEG, sop_instance_uid=pydicom.uid.generate_uid(),
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                              series_instance_uid=pydicom.uid.generate_uid(), path="results/x.dcm")
        session.add(result)
        session.flush()
        export = Export(result_id=result.id, destination=destination, state=state, attempts=attempts)
        session.add(export)
        session.flush()
        for _ in range(attempts):
            session.add(ExportAttempt(export_id=export.id, status="0xA700"))


def check_metrics_from_rows(database) -> None:
    # Three finished jobs (0.4 s, 2.5 s, 40 s of work) and one still queued.
    first = add_finished_job(database, 0.4, waited=1.5)
    add_finished_job(database, 2.5, waited=0.2)
    add_finished_job(database, 40.0, waited=100.0, state=JobState.FAILED)
    add_study(database)
    with database.session(write=True) as session:
        queued_study = add_study(database)  # given back for want of disk space, its worker lost twice
        session.add(Job(study_id=queued_study, study_version=1, state=JobState.QUEUED, waiting_for="disk space",
                        worker_losses=2))
    # PACS: one export delivered at its first attempt, one still failing after 2 attempts.
    add_export(database, first, "PACS", ExportState.DELIVERED, attempts=1)
    add_export(database, first, "PACS", ExportState.PENDING, attempts=2)
    add_export(database, first, "ARCHIVE", ExportState.REFUSED, attempts=1)

    server = MonitoringServer(database, "127.0.0.1", free_port()).start()
    try:
        status, content_type, body = get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert status == 200 and content_type.startswith("text/plain")
    values = samples(body)
    assert metric(values, "dicomnode_database_up") == 1
    assert metric(values, "dicomnode_queue_depth") == 1
    assert metric(values, "dicomnode_jobs_waiting", reason="disk space") == 1
    assert metric(values, "dicomnode_jobs_waiting", reason="database") == 0
    assert metric(values, "dicomnode_job_worker_losses_total") == 2
    assert metric(values, "dicomnode_jobs", state="done") == 2
    assert metric(values, "dicomnode_jobs", state="failed") == 1
    assert metric(values, "dicomnode_instances_received_total") == 5  # one two-view instance per study
    assert metric(values, "dicomnode_studies", state="receiving") == 5
    duration = "dicomnode_job_duration_seconds"
    assert metric(values, f"{duration}_count") == 3
    assert metric(values, f"{duration}_sum") == pytest.approx(42.9, abs=0.01)
    assert metric(values, f"{duration}_bucket", le="0.25") == 0
    assert metric(values, f"{duration}_bucket", le="0.5") == 1
    assert metric(values, f"{duration}_bucket", le="2.0") == 1
    assert metric(values, f"{duration}_bucket", le="3.0") == 2
    assert metric(values, f"{duration}_bucket", le="30.0") == 2
    assert metric(values, f"{duration}_bucket", le="60.0") == 3
    assert metric(values, f"{duration}_bucket", le="+Inf") == 3
    assert metric(values, "dicomnode_job_wait_seconds_sum") == pytest.approx(101.7, abs=0.01)
    assert metric(values, "dicomnode_job_wait_seconds_bucket", le="1.0") == 1
    assert metric(values, "dicomnode_exports", destination="PACS", state="delivered") == 1
    assert metric(values, "dicomnode_exports", destination="PACS", state="pending") == 1
    assert metric(values, "dicomnode_exports", destination="ARCHIVE", state="refused") == 1
    assert metric(values, "dicomnode_export_attempts_total", destination="PACS") == 3
    assert metric(values, "dicomnode_export_failed_attempts_total", destination="PACS") == 2
    assert metric(values, "dicomnode_export_failed_attempts_total", destination="ARCHIVE") == 1


def test_metrics_from_rows_sqlite(tmp_path):
    database = sqlite_database(tmp_path)
    try:
        check_metrics_from_rows(database)
    finally:
        database.dispose()


@pytest.mark.postgres
def test_metrics_from_rows_postgresql(postgres_url):
    database = postgres_database(postgres_url)
    try:
        check_metrics_from_rows(database)
    finally:
        database.dispose()


def test_health_names_a_stopped_part_and_a_lost_database(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    database = sqlite_database(folder)
    parts = {"worker": True, "exporter": True}
    server = MonitoringServer(database, "127.0.0.1", free_port(), parts=lambda: parts).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, content_type, body = get(f"{base}/healthz")
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body)["checks"] == {"database": "ok", "exporter": "ok", "worker": "ok"}

        parts["worker"] = False
        status, _, body = get(f"{base}/healthz")
        assert status == 503
        assert json.loads(body)["checks"]["worker"] == "stopped"

        assert get(f"{base}/other")[0] == 404

        parts["worker"] = True
        database.dispose()
        shutil.rmtree(folder)
        folder.write_text("a file where the database's folder was: SQLite cannot open node.db")
        status, _, body = get(f"{base}/healthz")
        assert status == 503
        assert json.loads(body)["checks"]["database"].startswith("unavailable")
        status, _, body = get(f"{base}/metrics")
        assert status == 200  # a scrape still answers, saying the database did not
        assert metric(samples(body), "dicomnode_database_up") == 0
    finally:
        server.stop()
        database.dispose()


# -- a real `dicomnode serve` with [http] and JSON-lines logs ---------------------------------------


@pytest.mark.network
@pytest.mark.slow
def test_serve_health_metrics_and_json_log_without_patient_data(tmp_path, storescp):
    manifest = write_studies(tmp_path / "s", studies=1, seed=11, layout="split", png=False)
    (study,) = manifest["studies"]
    patient_name, patient_id = "Quintessa^Zzyzx", "PID-Q7Z3X9"
    files = []
    for item in study["files"]:
        ds = pydicom.dcmread(tmp_path / "s" / study["folder"] / item["file"])
        ds.PatientName, ds.PatientID = patient_name, patient_id
        files.append(tmp_path / item["file"])
        ds.save_as(files[-1], enforce_file_format=True)

    port, http_port = free_port(), free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)])
    with config.open("a") as toml:
        toml.write(f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n[logging]\njson = true\nlevel = "DEBUG"\n')
    base = f"http://127.0.0.1:{http_port}"
    node = NodeProcess(config, tmp_path / "node.log", port=port)
    with node:
        wait_for_port(http_port)
        status, _, body = get(f"{base}/healthz")
        assert status == 200, body
        assert set(json.loads(body)["checks"]) == {"database", "receiver", "assembly", "corrections", "retention", "worker",
                                                 "exporter"}
        before = samples(get(f"{base}/metrics")[2])
        assert metric(before, "dicomnode_instances_received_total") == 0
        assert metric(before, "dicomnode_studies", state="processed") == 0

        assert storescu(files, port).returncode == 0
        expected = 5  # a SEG per view, GSPS, SR, SC
        wait_until(lambda: len(pacs_objects(storescp)) >= expected, 120, "the results at the PACS")
        after = wait_until(lambda: (lambda v: v if metric(v, "dicomnode_exports", destination="PACS",
                                                          state="delivered") == expected else None)(
            samples(get(f"{base}/metrics")[2])), 30, "the metrics to count the deliveries")
        assert metric(after, "dicomnode_instances_received_total") == 2
        assert metric(after, "dicomnode_studies", state="processed") == 1
        assert metric(after, "dicomnode_jobs", state="done") == 1
        assert metric(after, "dicomnode_queue_depth") == 0
        assert metric(after, "dicomnode_job_duration_seconds_count") == 1
        assert metric(after, "dicomnode_job_duration_seconds_sum") > 0
        assert metric(after, "dicomnode_export_attempts_total", destination="PACS") == expected
        assert metric(after, "dicomnode_export_failed_attempts_total", destination="PACS") == 0
        assert node.terminate() == 0

    lines = [line for line in node.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    text = "\n".join(lines)
    assert study["study_instance_uid"] in text  # the log does speak of the study ...
    for secret in (patient_name, "Quintessa", "Zzyzx", patient_id):  # ... but not of the patient
        assert secret not in text


@pytest.mark.network
@pytest.mark.slow
def test_disk_pressure_end_to_end(tmp_path, storescp):
    """Issue 17: the node's var folder on its own 48 MiB tmpfs with a 12 MiB floor. A study is
    acknowledged, then the disk fills (a ballast leaves 4 MiB) before it is processed: the receiver
    answers 0xA700, the worker pauses and the job waits (not failed), ``dicomnode status`` and
    ``/metrics`` show the condition; the ballast deleted, everything resumes by itself."""
    from typer.testing import CliRunner

    from dicomnode.cli import app
    from tests.processing_helpers import fill, require_tmpfs, unmount

    var = tmp_path / "var"
    require_tmpfs(var, 48)
    try:
        manifest = write_studies(tmp_path / "s", studies=2, seed=12, layout="split", png=False)
        first, second = ([tmp_path / "s" / s["folder"] / f["file"] for f in s["files"]] for s in manifest["studies"])
        port, http_port = free_port(), free_port()
        config = write_node_config(tmp_path / "node.toml", var_dir=var, port=port, quiet_seconds=3,
                                   destinations=[("PACS", storescp.port, storescp.aet)])
        config.write_text(config.read_text().replace("min_free_bytes = 0", f"min_free_bytes = {12 << 20}")
                          + f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n')
        base = f"http://127.0.0.1:{http_port}"

        node = NodeProcess(config, tmp_path / "node.log", port=port)
        with node:
            wait_for_port(http_port)
            assert storescu(first[:1], port).returncode == 0  # one view: assembled after the quiet period
            ballast = fill(var, leave_bytes=4 << 20)
            refused = storescu(second, port)
            assert "Refused: OutOfResources" in refused.stdout + refused.stderr  # dcmtk's name for 0xA700
            report = wait_until(lambda: (lambda r: r if r["jobs"]["queued"] == 1 else None)(status_report(config)), 30,
                                "the acknowledged study's job to be queued")
            assert report["disk"]["below_floor"] and report["needs_attention"]
            time.sleep(3)  # the worker polls every 0.2 s: it would have run the job by now
            report = status_report(config)
            assert report["jobs"] == {"queued": 1, "running": 0, "done": 0, "failed": 0}
            values = samples(get(f"{base}/metrics")[2])
            assert metric(values, "dicomnode_disk_below_floor") == 1
            assert metric(values, "dicomnode_spool_free_bytes") < metric(values, "dicomnode_spool_min_free_bytes")
            assert pacs_objects(storescp) == []
            assert "below the floor" in CliRunner().invoke(app, ["status", "--config", str(config)]).output.lower()

            ballast.unlink()  # space returns: nobody runs `dicomnode retry`
            wait_until(lambda: status_report(config)["jobs"]["done"] == 1, 60, "the waiting job to be done")
            assert storescu(second, port).returncode == 0  # and the camera's retry is taken
            wait_until(lambda: status_report(config)["jobs"]["done"] == 2 and status_report(config)["exports"]["pending"] == 0
                       and status_report(config)["exports"]["sending"] == 0, 120, "both studies' results delivered")
            report = status_report(config)
            assert not report["disk"]["below_floor"] and not report["needs_attention"]
            assert report["jobs"]["failed"] == 0
            assert metric(samples(get(f"{base}/metrics")[2]), "dicomnode_disk_below_floor") == 0
            assert node.terminate() == 0
        log = node.log()
        assert "worker paused: waiting for disk space" in log and "worker resumed: disk space is back" in log
    finally:
        unmount(var)
