"""Commands of the site's own model: ``models`` (list, activate, rollback) and ``learn``
(docs/training.md, "The site's own model")."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dicomnode.cli.app import CONFIG, app, node_config, open_database

models_app = typer.Typer(help="The model registry: list, activate, rollback.", no_args_is_help=False,
                         invoke_without_command=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")
BY = typer.Option(None, "--by", help="Who switches the model (default: the OS user).")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, config: Path | None = CONFIG,
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every registered model with its state, card, data and metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from dicomnode.learn.registry import list_models

    rows = list_models(open_database(node_config(config)))
    if as_json:
        typer.echo(json.dumps([_row_json(row) for row in rows], indent=2))
        return
    if not rows:
        typer.echo("no registered models: studies are read with [model] weights")
        return
    typer.echo(f"{'id':>4}  {'state':<9}  {'version':<40}  {'created':<20}  {'activated':<20}  by")
    for row in rows:
        typer.echo(f"{row.id:>4}  {row.state.value:<9}  {row.version:<40}  {row.created_at:%Y-%m-%d %H:%M:%S}   "
                   f"{'' if row.activated_at is None else f'{row.activated_at:%Y-%m-%d %H:%M:%S}':<20}  "
                   f"{row.activated_by or ''}")


def _row_json(row) -> dict:
    return {"id": row.id, "task": row.task, "version": row.version, "state": row.state.value,
            "weights": row.weights_path, "sha256": row.sha256, "card": json.loads(row.card),
            "data": json.loads(row.data), "metrics": json.loads(row.metrics),
            "created_at": row.created_at.isoformat(), "created_by": row.created_by,
            "activated_at": None if row.activated_at is None else row.activated_at.isoformat(),
            "activated_by": row.activated_by}


@models_app.command("activate")
def activate(model_id: int = typer.Argument(..., metavar="ID"), config: Path | None = CONFIG, by: str | None = BY) -> None:
    """Make model ID the active one; the worker reads the next study with it."""
    from dicomnode.learn.registry import RegistryError
    from dicomnode.learn.registry import activate as do_activate

    try:
        row = do_activate(open_database(node_config(config)), model_id, by=by)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"model {row.id} ({row.version}) is active")


@models_app.command("rollback")
def rollback(config: Path | None = CONFIG, by: str | None = BY) -> None:
    """Undo the last switch: the model active before it is active again."""
    from dicomnode.learn.registry import RegistryError
    from dicomnode.learn.registry import rollback as do_rollback

    try:
        previous = do_rollback(open_database(node_config(config)), by=by)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("the configured [model] weights are in use" if previous is None else f"model {previous} is active")


@app.command()
def learn(
    config: Path | None = CONFIG,
    data: list[Path] | None = typer.Option(None, "--data", help="More training studies (a folder; repeatable)."),
    activate: bool = typer.Option(True, "--activate/--no-activate",
                                  help="Activate the candidate when the gate passes (default) or keep it a candidate."),
    resume: bool = typer.Option(False, "--resume", help="Continue the last run's checkpoint."),
    shuffled_labels: bool = typer.Option(False, "--shuffled-labels",
                                         help="Negative control: train on labels shuffled between studies (never activated)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the preset's epochs."),
    folds: int | None = typer.Option(None, "--folds", help="Override [learn] folds (0: no cross-validation, "
                                     "the operating point from the candidate's own maps; else 2-10)."),
    by: str | None = BY,
    as_json: bool = typer.Option(False, "--json", help="Print the gate's report as JSON."),
) -> None:
    """Train a candidate on the site's corrected studies and let the gate decide (docs/training.md).

    Run it under `nice`; [learn] threads limits its torch threads. Nothing is sent anywhere."""
    from pydantic import ValidationError

    from dicomnode.config import LearnSection
    from dicomnode.learn.gate import render
    from dicomnode.learn.learn import LearnError
    from dicomnode.learn.learn import learn as run_learn
    from dicomnode.ops.logs import configure_logging
    from dicomnode.store.spool import Spool
    from dicomnode.train.loop import TrainingError

    node = node_config(config)
    if folds is not None:
        try:
            settings = LearnSection.model_validate({**node.learn.model_dump(), "folds": folds})
        except ValidationError as exc:
            raise typer.BadParameter(exc.errors()[0]["msg"], param_hint="--folds") from None
        node = node.model_copy(update={"learn": settings})
    configure_logging(node.logging)
    database = open_database(node)
    with Spool(node.storage.spool_path) as spool:
        try:
            outcome = run_learn(node, database, spool, data=data or (), activate=activate, resume=resume,
                                shuffled_labels=shuffled_labels, by=by, epochs=epochs, progress=not as_json)
        except (LearnError, TrainingError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(outcome.report, indent=2))
        return
    typer.echo(f"candidate {outcome.model.id} ({outcome.model.version})")
    typer.echo(render(outcome.decision))
    typer.echo("activated" if outcome.activated else "kept as a candidate")


corrections_app = typer.Typer(help="Site corrections: pull them from the PACS.", no_args_is_help=True,
                              rich_markup_mode=None)
app.add_typer(corrections_app, name="corrections")


@corrections_app.command("pull")
def pull(
    config: Path | None = CONFIG,
    source: str | None = typer.Option(None, "--from", help="The [[destinations]] entry to ask (default: the first)."),
    study: list[str] | None = typer.Option(None, "--study", help="A Study Instance UID (repeatable; default: the "
                                                                 "studies processed in the last --days)."),
    days: int = typer.Option(30, "--days", min=1, help="How far back the processed studies go."),
    as_json: bool = typer.Option(False, "--json", help="Print what was pulled as JSON."),
) -> None:
    """Retrieve SEG/SR/KO series the node lacks from the PACS by C-FIND and C-GET (docs/training.md).

    Exit 0: every study asked; 1: a study's query or retrieval failed; 2: bad arguments or no association."""
    from dicomnode.dicom.scu import AssociationFailed
    from dicomnode.dicom.uids import UIDError, check_uid
    from dicomnode.learn.corrections import examine_new
    from dicomnode.learn.pull import processed_studies
    from dicomnode.learn.pull import pull as run_pull
    from dicomnode.ops.logs import configure_logging
    from dicomnode.store.spool import Spool

    node = node_config(config)
    configure_logging(node.logging)
    peers = {d.name: d for d in node.destinations}
    if not peers or (source is not None and source not in peers):
        typer.echo(f"error: no [[destinations]] entry {source or ''!s} to pull from; configured: "
                   f"{', '.join(peers) or 'none'}", err=True)
        raise typer.Exit(2)
    try:
        for uid in study or []:
            check_uid(uid, "--study")
    except UIDError as exc:
        typer.echo(f"error: not a valid Study Instance UID: {exc}", err=True)
        raise typer.Exit(2) from None
    database = open_database(node)
    studies = list(study) if study else processed_studies(database, days)
    with Spool(node.storage.spool_path) as spool:
        try:
            outcomes = run_pull(node, database, spool, peers[source] if source else node.destinations[0], studies)
        except AssociationFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        labels = examine_new(database, spool, node.results.manufacturer)
    if as_json:
        typer.echo(json.dumps({"studies": [o.to_json() for o in outcomes],
                               "labels": {k: sum(r.kind.value == k for r in labels)
                                          for k in sorted({r.kind.value for r in labels})}}, indent=2))
    else:
        for o in outcomes:
            typer.echo(f"{o.study_instance_uid}: {o.series_found} correction series at the PACS, {o.series_known} "
                       f"already here, {o.retrieved} instances retrieved, {o.failed} failed"
                       + (f" ({'; '.join(o.errors)})" if o.errors else ""))
        typer.echo(f"{len(labels)} new label(s) examined")
    if any(o.failed or o.errors for o in outcomes):
        raise typer.Exit(1)
