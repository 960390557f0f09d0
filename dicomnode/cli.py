"""The ``dicomnode`` command line.

Each command is a thin wrapper: it parses options and calls the module that does the work, imported
inside the command so that ``dicomnode status`` does not pay for importing torch.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    name="dicomnode",
    help="A DICOM-native AI node for whole-body bone scintigraphy.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts name TOML sections like "[model] weights": print them as written
)


@app.callback()
def _root() -> None:
    """A DICOM-native AI node for whole-body bone scintigraphy."""


class Layout(str, Enum):
    multiframe = "multiframe"
    split = "split"
    mixed = "mixed"


# dicomnode.synth.vendors.VENDORS and "mixed" (each study the next vendor); test_cli_help checks they agree.
Vendor = Enum("Vendor", {name: name for name in ("generic", "siemens", "ge", "philips", "mediso", "mixed")}, type=str)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write OUT/<study>/ and OUT/manifest.json into."),
    studies: int = typer.Option(10, min=1, help="Number of studies to simulate."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same studies."),
    layout: Layout = typer.Option(Layout.mixed, help="multiframe: one 2-frame instance; split: one instance per view."),
    png: bool = typer.Option(False, "--png", help="Also write an overlay picture per study."),
    rows: int = typer.Option(1024, help="Matrix rows (head to feet)."),
    columns: int = typer.Option(256, help="Matrix columns."),
    spacing: float = typer.Option(2.26, help="Pixel spacing in mm."),
    vendor: Vendor | None = typer.Option(None, help="Write whole exams as this vendor sends them: whole body (vendor headers), statics, TOMO, RECON TOMO, screen capture; mixed: the vendors in turn."),
    phases: int = typer.Option(1, min=1, max=2, help="With --vendor: 2 adds a second whole-body scan (two-phase protocol)."),
    spect_ct: bool = typer.Option(False, "--spect-ct", help="Simulate hybrid bone SPECT/CT exams instead (CT series + NM RECON TOMO, masks of metastatic and benign lesions)."),
    size: str = typer.Option("standard", help="With --spect-ct: grid size, standard, small or tiny."),
    workers: int = typer.Option(1, min=1, help="With --spect-ct: worker processes."),
) -> None:
    """Simulate whole-body 99mTc-MDP bone scans as NM Image Storage files with lesion truth
    (or, with --spect-ct, bone SPECT/CT exams: docs/simulation.md)."""
    if spect_ct:
        from dicomnode.synth.spectct import write_exams

        try:
            exams = write_exams(out, exams=studies, seed=seed, size=size, workers=workers)["exams"]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        typer.echo(f"wrote {len(exams)} SPECT/CT {'exam' if len(exams) == 1 else 'exams'} to {out}")
        return
    from dicomnode.synth import write_studies

    manifest = write_studies(
        out, studies=studies, seed=seed, layout=layout.value, png=png,
        rows=rows, columns=columns, spacing_mm=spacing,
        vendor=vendor.value if vendor else None, phases=phases,
    )
    count = len(manifest["studies"])
    typer.echo(f"wrote {count} {'study' if count == 1 else 'studies'} to {out}")


@app.command()
def train(
    config: Path = typer.Option(..., "--config", help="Training preset, e.g. config/train/unet.toml."),
    data: list[Path] = typer.Option(..., "--data", help="Folder of training data, repeatable: a `dicomnode synth` folder, NM DICOM with SEG / LabelMe labels, BS-80K whole-body (VOC boxes) or BS-80K crops (label file); the format is detected and logged."),
    out: Path = typer.Option(..., "--out", help="Folder for checkpoint, curves, split and the exported model."),
    epochs: int | None = typer.Option(None, min=1, help="Override the preset's optim.epochs."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda[:N]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a segmentation network from a preset; export <name>.safetensors + <name>.json to OUT."""
    import logging

    from dicomnode.train.config import ConfigError, load_config
    from dicomnode.train.loop import TrainingError, run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        preset = load_config(config, **({"optim.epochs": epochs} if epochs else {}))
        result = run_training(preset, data, out, device=device, resume=resume, progress=progress, num_threads=threads)
    except (ConfigError, TrainingError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"best epoch {result.best_epoch} of {len(result.history)} on {result.device} "
        f"({result.wall_seconds:.0f} s): {result.card}"
    )


class Subset(str, Enum):
    all = "all"
    train = "train"
    val = "val"
    test = "test"


@app.command()
def evaluate(
    weights: list[Path] = typer.Option(..., "--weights", help="Model (.safetensors with its .json card, or a .json card); repeat for one model per run."),
    data: Path = typer.Option(..., "--data", help="Folder of labelled studies: synth folder, DICOM with SEG / LabelMe, BS-80K whole-body (boxes) or BS-80K crops; the format is detected and printed."),
    runs: int = typer.Option(5, min=1, help="With one model: bootstrap resamples of the patients."),
    seed: int = typer.Option(42, help="Seed of the bootstrap resamples."),
    subset: Subset = typer.Option(Subset.all, help="Evaluate only these patients of the model's training split."),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Folder for report.md and the overlay PNGs."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON instead of a table."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: CUDA when present)."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    record: str | None = typer.Option(None, "--record-in-card", help="Also store the headline in the (first) model card's metrics under this name."),
    anatomy: bool = typer.Option(True, "--anatomy/--lesion-model-only", help="Read the lesions on the anatomy map as the node does (labelled-study folders)."),
) -> None:
    """Score models as the papers do: DSC / precision / recall ± std, lesion sensitivity, FP per study."""
    import json
    import logging

    from dicomnode.train.report import evaluate_folder

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from dicomnode.train.datasets import DataFormat, detect_format

    try:
        kind = detect_format(data)
        if not as_json:
            typer.echo(f"{data}: {kind.value} format", err=True)
        if kind in (DataFormat.BS80K_WHOLEBODY, DataFormat.BS80K_CROPS):
            from dicomnode.train.realeval import evaluate_bs80k

            if len(weights) != 1 or subset is not Subset.all or record:
                raise ValueError("BS-80K folders are scored for one model on all studies (no --subset, --record-in-card)")
            scores = evaluate_bs80k(weights[0], data, out, device=device)
            typer.echo(json.dumps(scores, indent=2) if as_json else "\n".join(
                f"{k.replace('_', ' ')}: {v:.3f}" if isinstance(v, float) else f"{k.replace('_', ' ')}: {v}"
                for k, v in scores.items() if not isinstance(v, (dict, list))))
            typer.echo(f"report: {out / 'bs80k.json'}")
            return
        evaluation, report = evaluate_folder(weights, data, out, runs=runs, seed=seed, subset=subset.value, device=device,
                                             anatomy=anatomy)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if record:
        from dicomnode.train.report import record_in_card

        record_in_card(weights[0], evaluation, record)
    if as_json:
        typer.echo(json.dumps(evaluation.to_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(evaluation.runs)} runs ({evaluation.runs_kind}), {evaluation.first['studies']} studies")
    for name in evaluation.across_runs:
        table.add_column(name.replace("_", " "))
    table.add_row(*(f"{v['mean']:.3f} ± {v['std']:.3f}" for v in evaluation.across_runs.values()))
    Console().print(table)
    typer.echo(f"report: {report}")


def _node_config(config: Path | None):
    """Load the node configuration or exit 2 with the reasons (docs/architecture.md, "Operations")."""
    from dicomnode.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _peers(to: list[str], node, ca: Path | None, cert: Path | None, key: Path | None):
    """``--to`` values as destinations (TLS when --tls-* given); exit 2 on a malformed one."""
    from dicomnode.dicom.peers import TLSClient
    from dicomnode.dicom.scu import parse_peer

    try:
        tls = TLSClient(ca=ca, cert=cert, key=key) if (ca or cert or key) else None
        return [parse_peer(text, default_ae_title=node.node.ae_title).model_copy(update={"tls": tls})
                for text in to]
    except ValueError as exc:
        typer.echo(f"error: --to {exc}", err=True)
        raise typer.Exit(2) from None


def _calling_ae(aet: str | None, node) -> str:
    """``--aet`` validated (PS3.5 §6.2), or the node's own AE title."""
    from dicomnode.dicom.peers import validate_ae_title

    try:
        return validate_ae_title(aet) if aet is not None else node.node.ae_title
    except ValueError as exc:
        typer.echo(f"error: --aet {exc}", err=True)
        raise typer.Exit(2) from None


_TO_HELP = "Peer as HOST:PORT[:AET] (AET defaults to this node's AE title)."
_TLS_CA = typer.Option(None, "--tls-ca", help="Use TLS, trusting this CA (PEM).")
_TLS_CERT = typer.Option(None, "--tls-cert", help="Use TLS with this client certificate (PEM).")
_TLS_KEY = typer.Option(None, "--tls-key", help="Private key of --tls-cert (PEM).")


@app.command()
def echo(
    to: list[str] = typer.Option([], "--to", help=f"{_TO_HELP} Repeatable. Default: every configured "
                                 "destination and this node itself."),
    config: Path | None = typer.Option(None, "--config", help="Node configuration (default $DICOMNODE_CONFIG)."),
    aet: str | None = typer.Option(None, "--aet", help="Our calling AE title (default: node.ae_title)."),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for each peer."),
    tls_ca: Path | None = _TLS_CA,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
) -> None:
    """C-ECHO (DICOM verification) to peers; exit 1 if any does not answer success."""
    from dicomnode.dicom.peers import Destination
    from dicomnode.dicom.scu import echo as c_echo

    node = _node_config(config)
    calling_ae = _calling_ae(aet, node)
    peers = _peers(to, node, tls_ca, tls_cert, tls_key)
    if not peers:
        host = "127.0.0.1" if node.node.host in ("0.0.0.0", "::", "") else node.node.host
        peers = [*node.destinations, Destination(name="this-node", host=host, port=node.node.port,
                                                  ae_title=node.node.ae_title)]
    failed = 0
    for peer in peers:
        result = c_echo(peer, calling_ae=calling_ae, timeout=timeout)
        failed += not result.ok
        typer.echo(f"{'ok  ' if result.ok else 'FAIL'} {peer.name} {peer.ae_title}@{peer.host}:{peer.port} "
                   f"{result.status} {result.detail} ({result.seconds * 1000:.0f} ms)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def send(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    to: str = typer.Option(..., "--to", help=_TO_HELP),
    config: Path | None = typer.Option(None, "--config", help="Node configuration (default $DICOMNODE_CONFIG)."),
    aet: str | None = typer.Option(None, "--aet", help="Our calling AE title (default: node.ae_title)."),
    timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for each answer."),
    tls_ca: Path | None = _TLS_CA,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
) -> None:
    """C-STORE files to a peer with a status per file; exit 1 if any file was not stored."""
    from dicomnode.dicom.scu import send_files

    node = _node_config(config)
    calling_ae = _calling_ae(aet, node)
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        typer.echo(f"error: no such file or folder: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    (peer,) = _peers([to], node, tls_ca, tls_cert, tls_key)
    counts = {"stored": 0, "failed": 0, "skipped": 0}

    def show(result) -> None:
        kind = "skipped" if result.skipped else "stored" if result.ok else "failed"
        counts[kind] += 1
        typer.echo(f"[{sum(counts.values())}] {result.status_text} {result.path}: {result.detail}",
                   err=kind == "failed")

    send_files(files, peer, calling_ae=calling_ae, on_result=show, timeout=timeout)
    typer.echo(f"{counts['stored']} stored, {counts['failed']} failed, {counts['skipped']} skipped "
               f"(to {peer.ae_title}@{peer.host}:{peer.port})")
    raise typer.Exit(1 if counts["failed"] else 0)


_CONFIG = typer.Option(None, "--config", help="Node configuration (default $DICOMNODE_CONFIG).")


def _run_parts(config: Path | None, parts) -> None:
    """Run node parts until SIGTERM/SIGINT; exit 2 with the reason when they cannot start."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.ops.logs import configure_logging
    from dicomnode.ops.service import ListenError, run_until_signalled

    node = _node_config(config)
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
def serve(config: Path | None = _CONFIG) -> None:
    """Run the node: receiver, assembly, one worker and the exporter, until SIGTERM or SIGINT."""
    from dicomnode.ops.service import Parts

    _run_parts(config, Parts())


@app.command()
def worker(
    config: Path | None = _CONFIG,
    export: bool = typer.Option(False, "--export/--no-export", help="Also run an exporter."),
) -> None:
    """Run an extra worker (scale-out: same database and spool, this or another host)."""
    from dicomnode.ops.service import Parts

    _run_parts(config, Parts(receive=False, assemble=False, work=True, export=export))


def _database(node):
    """The node's database, which must have been initialised by ``serve`` (exit 2 otherwise)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.store.db import DatabaseError, connect

    try:
        database = connect(node.database_url, create=False)
        revision = database.current_revision()
    except (DatabaseError, SQLAlchemyError) as exc:
        typer.echo(f"error: database {node.database_url}: {exc}", err=True)
        raise typer.Exit(2) from None
    if revision is None:
        typer.echo(f"error: database {database.url} is empty (start the node with `dicomnode serve` first)", err=True)
        raise typer.Exit(2)
    return database


@app.command()
def status(
    config: Path | None = _CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Studies, jobs and exports by state; stuck, failed and refused items; the spool's free space."""
    import json

    from dicomnode.ops.status import collect, render

    node = _node_config(config)
    database = _database(node)
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
    config: Path | None = _CONFIG,
    apply: bool = typer.Option(False, "--apply", help="Delete; without it, only say what would be deleted."),
) -> None:
    """Delete the spool files of studies delivered longer ago than [retention] (dry run unless --apply)."""
    from dicomnode.ops.status import size_text
    from dicomnode.store.retention import purge as run_purge
    from dicomnode.store.spool import Spool

    node = _node_config(config)
    database = _database(node)
    try:
        with Spool(node.storage.spool_path, min_free_bytes=node.storage.min_free_bytes) as spool:
            report = run_purge(database, spool, node.retention, dry_run=not apply)
    finally:
        database.dispose()
    verb = "deleted" if apply else "would delete (dry run; --apply deletes)"
    typer.echo(f"{verb}: {report.studies} studies ({size_text(report.bytes)}), {report.quarantined} refused "
               f"instance(s); {report.plan.held_studies} studies not delivered yet are kept"
               + (f"; finished {report.finished} interrupted deletion(s)" if report.finished else ""))


@app.command()
def retry(
    config: Path | None = _CONFIG,
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

    node = _node_config(config)
    database = _database(node)
    states = [state for state, chosen in ((ExportState.REFUSED, refused), (ExportState.FAILED, failed)) if chosen]
    try:
        counts = reopen(database, jobs=jobs, export_states=states, waiting=waiting,
                        destination=destination, study_uid=study)
    finally:
        database.dispose()
    typer.echo(f"{counts.jobs} job(s) queued again, {counts.exports} export(s) pending again")


@app.command()
def segment(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Folder for the result objects and summary.json / summary.md."),
    config: Path | None = _CONFIG,
    weights: str | None = typer.Option(None, "--weights", help='"default", "threshold" or a model path '
                                       "(default: [model] weights)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: [model] device)."),
) -> None:
    """The node's pipeline on files, offline: results and a summary; exit 1 if a study failed."""
    node = _node_config(config)
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        typer.echo(f"error: no such file or folder: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    from dicomnode.pipeline.results import ResultOptions
    from dicomnode.tools.offline import segment_files
    from dicomnode.pipeline.processing import load_segmenter

    try:
        segmenter = load_segmenter(weights or node.model.weights, device or node.model.device, node.model.threshold)
    except (OSError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: cannot load the model: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = segment_files(files, out, segmenter, ResultOptions.from_config(node.results))
    for study in summary.studies:
        if study.error:
            typer.echo(f"FAIL {study.study_uid or '(no Study Instance UID)'}: {study.error}", err=True)
        else:
            typer.echo(f"ok   {study.study_uid}: {len(study.lesions)} lesion(s), {len(study.objects)} object(s)")
    for item in summary.skipped:
        typer.echo(f"skipped {item['file']}: {item['reason']}", err=True)
    typer.echo(f"summary: {out / 'summary.md'}")
    raise typer.Exit(0 if summary.ok else 1)


class DemoPacs(str, Enum):
    auto = "auto"
    dcmtk = "dcmtk"
    pynetdicom = "pynetdicom"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def demo(
    studies: int = typer.Option(3, min=1, max=50, help="Number of studies to simulate and send."),
    seed: int = typer.Option(2025, help="Simulator seed; the same seed gives the same studies."),
    out: Path | None = typer.Option(None, "--out", help="Empty folder for the run (default: a new temporary folder)."),
    weights: str = typer.Option("default", "--weights", help='"default" (the shipped model), "threshold" or a model path.'),
    device: Device = typer.Option(Device.auto, help="auto (CUDA when present), cpu or cuda."),
    pacs: DemoPacs = typer.Option(DemoPacs.auto, "--pacs", help="The PACS: dcmtk storescp (auto: when installed) "
                                  "or a pynetdicom Storage SCP."),
    verbose: bool = typer.Option(False, "--verbose",
                                 help="The node's log on stderr (default: node.log in the run's folder)."),
) -> None:
    """Simulate studies, send them to a node on this machine, and show the results that reach a PACS."""
    from rich.console import Console

    from dicomnode.config import LoggingSection
    from dicomnode.ops.logs import configure_logging
    from dicomnode.tools.demo import LOG_FILE, demo_folder, render, run_demo
    from dicomnode.tools.harness import HarnessError

    handler = None
    try:
        folder = demo_folder(out)
        log_file = None if verbose else folder / LOG_FILE
        handler = configure_logging(LoggingSection(level="INFO"), file=log_file)
        if log_file is not None:
            typer.echo(f"the node's log: {log_file}", err=True)
        report = run_demo(folder, studies=studies, seed=seed, weights=weights, device=device.value,
                          pacs_kind=pacs.value, progress=lambda line: typer.echo(line, err=True))
    except (HarnessError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if handler is not None:  # the run's log file is the run's: closed with it
            logging.getLogger().removeHandler(handler)
            handler.close()
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    for item in render(report):
        console.print(item)
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    app()
