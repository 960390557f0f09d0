"""Commands that run and watch the node: serve, worker, status, purge, retry."""

from __future__ import annotations

from pathlib import Path

import typer

from dicomnode.cli.app import CONFIG, app, node_config, open_database


def _run_parts(config: Path | None, parts) -> None:
    """Run node parts until SIGTERM/SIGINT; exit 2 with the reason when they cannot start."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.ops.logs import configure_logging
    from dicomnode.ops.service import ListenError, run_until_signalled

    node = node_config(config)
    configure_logging(node.logging)
    try:
        run_until_signalled(node, parts)
    except ListenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError, RuntimeError, SQLAlchemyError) as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(config: Path | None = CONFIG) -> None:
    """Run the node: receiver, assembly, one worker and the exporter, until SIGTERM or SIGINT."""
    from dicomnode.ops.service import Parts

    _run_parts(config, Parts())


@app.command()
def worker(
    config: Path | None = CONFIG,
    export: bool = typer.Option(False, "--export/--no-export", help="Also run an exporter."),
) -> None:
    """Run an extra worker (scale-out: same database and spool, this or another host)."""
    from dicomnode.ops.service import Parts

    _run_parts(config, Parts(receive=False, assemble=False, work=True, export=export))


@app.command()
def status(
    config: Path | None = CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Studies, jobs and exports by state; stuck, failed and refused items; the spool's free space."""
    import json

    from dicomnode.ops.status import collect, render

    node = node_config(config)
    database = open_database(node)
    try:
        report = collect(database, quiet_seconds=node.assembly.quiet_seconds,
                         attention_after_seconds=node.export.attention_after_seconds,
                         spool_root=node.storage.spool_path, min_free_bytes=node.storage.min_free_bytes,
                         retention=node.retention)
    finally:
        database.dispose()
    typer.echo(json.dumps(report, indent=2) if as_json else render(report))


@app.command()
def purge(
    config: Path | None = CONFIG,
    apply: bool = typer.Option(False, "--apply", help="Delete; without it, only say what would be deleted."),
) -> None:
    """Delete the spool files of studies delivered longer ago than [retention] (dry run unless --apply)."""
    from dicomnode.ops.status import size_text
    from dicomnode.store.retention import purge as run_purge
    from dicomnode.store.spool import Spool

    node = node_config(config)
    database = open_database(node)
    try:
        with Spool(node.storage.spool_path, min_free_bytes=node.storage.min_free_bytes) as spool:
            report = run_purge(database, spool, node.retention, dry_run=not apply)
    finally:
        database.dispose()
    verb = "deleted" if apply else "would delete (dry run; --apply deletes)"
    typer.echo(f"{verb}: {report.studies} studies ({size_text(report.bytes)}), {report.quarantined} refused "
               f"instance(s); {report.plan.held_studies} studies not delivered yet are kept"
               + (f"; {len(report.plan.labelled)} labelled by the site are kept for learning" if report.plan.labelled else "")
               + (f"; finished {report.finished} interrupted deletion(s)" if report.finished else ""))


@app.command()
def retry(
    config: Path | None = CONFIG,
    jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="Failed jobs back to the queue."),
    refused: bool = typer.Option(True, "--refused/--no-refused", help="Refused exports back to pending."),
    failed: bool = typer.Option(True, "--failed/--no-failed", help="Failed exports back to pending."),
    waiting: bool = typer.Option(False, "--waiting", help="Also send exports waiting for their back-off now."),
    destination: str | None = typer.Option(None, "--destination", help="Only exports to this destination."),
    study: str | None = typer.Option(None, "--study", help="Only this Study Instance UID."),
) -> None:
    """Put failed jobs and refused or failed exports back in line."""
    from dicomnode.store.models import ExportState
    from dicomnode.ops.status import retry as reopen

    node = node_config(config)
    database = open_database(node)
    states = [state for state, chosen in ((ExportState.REFUSED, refused), (ExportState.FAILED, failed)) if chosen]
    try:
        counts = reopen(database, jobs=jobs, export_states=states, waiting=waiting,
                        destination=destination, study_uid=study)
    finally:
        database.dispose()
    typer.echo(f"{counts.jobs} job(s) queued again, {counts.exports} export(s) pending again")
