"""Commands for the model: simulated studies, training, evaluation, offline segmentation, the demo."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from dicomnode.cli.app import CONFIG, app, node_config


class Layout(str, Enum):
    multiframe = "multiframe"
    split = "split"
    mixed = "mixed"


def _vendor(value: str | None) -> str | None:
    """``--vendor``: a profile of :data:`dicomnode.synth.vendors.VENDORS` or "mixed" (each study the
    next vendor). Checked here, not as a choice list, so that only ``synth`` imports the simulator."""
    if value is None:
        return None
    from dicomnode.synth.vendors import VENDORS

    if value not in (*VENDORS, "mixed"):
        raise typer.BadParameter(f"{value!r} is not one of {', '.join((*VENDORS, 'mixed'))}")
    return value


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
    vendor: str | None = typer.Option(None, callback=_vendor, metavar="VENDOR", help="Write whole exams as this vendor sends them (a profile of dicomnode/synth/vendors.py): whole body (vendor headers), statics, TOMO, RECON TOMO, screen capture; mixed: the vendors in turn."),
    phases: int = typer.Option(1, min=1, max=2, help="With --vendor: 2 adds a second whole-body scan (two-phase protocol)."),
    population: str = typer.Option("adult", help="Who is scanned: adult (metastatic cancer, the default) or adolescent (a paediatric oncology site: open growth plates, no degenerative joints; dicomnode/synth/patient.py)."),
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

    try:
        manifest = write_studies(
            out, studies=studies, seed=seed, layout=layout.value, png=png,
            rows=rows, columns=columns, spacing_mm=spacing,
            vendor=vendor, phases=phases, population=population,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    count = len(manifest["studies"])
    typer.echo(f"wrote {count} {'study' if count == 1 else 'studies'} to {out}")


@app.command()
def train(
    config: list[Path] = typer.Option(..., "--config", help="Training preset, e.g. config/train/unet.toml; its `task` key picks the trainer (planar lesions when absent). Repeatable for SPECT/CT presets, cross-validated side by side."),
    data: list[Path] = typer.Option([], "--data", help="Folder of training data, repeatable: a `dicomnode synth` folder, NM DICOM with SEG / LabelMe labels, BS-80K whole-body (VOC boxes) or BS-80K crops (label file); the format is detected and logged. SPECT/CT: one `dicomnode synth --spect-ct` folder. The anatomy map draws simulated studies itself and takes none."),
    out: Path = typer.Option(..., "--out", help="Folder for checkpoint, curves, split and the exported model."),
    epochs: int | None = typer.Option(None, min=1, help="Override the preset's epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Override the preset's batch size."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda[:N]."),
    resume: bool = typer.Option(False, "--resume", help="Planar lesions: continue from OUT/checkpoint.pt (the anatomy map always resumes from OUT/work)."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    folds: int = typer.Option(5, min=2, help="SPECT/CT: patient folds of the cross-validation."),
    final: str | None = typer.Option(None, "--final", help="SPECT/CT: the preset (by name) to train on every exam and export."),
    transfer: list[str] = typer.Option([], "--transfer", metavar="TARGET:SOURCE", help="SPECT/CT: also train TARGET from SOURCE's fold weights."),
    max_seconds: float | None = typer.Option(None, "--max-seconds", min=0, help="SPECT/CT: cap each training run (overrides the presets)."),
    workers: int = typer.Option(1, min=1, help="SPECT/CT: processes reading exams."),
) -> None:
    """Train a model from a preset of any task; export <name>.safetensors + <name>.json to OUT."""
    import logging

    from dicomnode.segmentation.modelcard import ANATOMY_MAP, SPECTCT_CLASSES
    from dicomnode.train.config import PresetError, load_preset
    from dicomnode.train.loop import TrainingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        presets = [load_preset(path) for path in config]
        tasks = {preset.task for preset in presets}
        if len(tasks) != 1 or (len(presets) > 1 and tasks != {SPECTCT_CLASSES}):
            raise PresetError(f"one preset per run, or SPECT/CT presets only (tasks {sorted(tasks)})")
        (task,) = tasks
        if task == SPECTCT_CLASSES:
            overrides = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size),
                                                       ("max_seconds", max_seconds)) if value is not None}
            _train_volume(config, data, out, overrides, device, folds, final, transfer, workers)
        elif task == ANATOMY_MAP:
            overrides = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size),
                                                       ("threads", threads)) if value is not None}
            _train_anatomy(config[0], out, overrides)
        else:
            overrides = {key: value for key, value in (("optim.epochs", epochs), ("optim.batch_size", batch_size))
                         if value is not None}
            _train_planar(config[0], data, out, overrides, device, resume, threads, progress)
    except (PresetError, TrainingError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _train_planar(config: Path, data: list[Path], out: Path, overrides: dict[str, object], device: str,
                  resume: bool, threads: int | None, progress: bool) -> None:
    from dicomnode.train.config import load_config
    from dicomnode.train.loop import run_training

    if not data:
        raise ValueError("--data is required for a planar-lesions preset")
    preset = load_config(config, **overrides)
    result = run_training(preset, data, out, device=device, resume=resume, progress=progress, num_threads=threads)
    typer.echo(f"best epoch {result.best_epoch} of {len(result.history)} on {result.device} "
               f"({result.wall_seconds:.0f} s): {result.card}")


def _train_anatomy(config: Path, out: Path, overrides: dict[str, object]) -> None:
    from dicomnode.train.anatomy import train as train_anatomy
    from dicomnode.train.config import load_preset

    preset = load_preset(config, **overrides)
    typer.echo(f"model card: {train_anatomy(preset, out / preset.name, out / 'work')}")


def _train_volume(config: list[Path], data: list[Path], out: Path, overrides: dict[str, object], device: str,
                  folds: int, final: str | None, transfer: list[str], workers: int) -> None:
    from dicomnode.train.config import load_preset
    from dicomnode.train.spectct import markdown, run_study

    if len(data) != 1:
        raise ValueError("--data takes one `dicomnode synth --spect-ct` folder for SPECT/CT presets")
    presets = [load_preset(path, **overrides) for path in config]
    result = run_study(data[0], out, presets, transfer=transfer, folds=folds, final=final, device=device,
                       workers=workers)
    typer.echo(markdown(result), nl=False)
    typer.echo(f"exams {result['exams']}, folds {result['folds']}, device {result['device']}, "
               f"wall {result['wall_seconds']} s")


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
    anatomy: bool = typer.Option(True, "--anatomy/--lesion-model-only", help="Read the lesions on the anatomy map as the node does (the fixed rules and the second stage)."),
    second_stage: bool = typer.Option(True, "--second-stage/--fixed-rules-only", help="With --anatomy: the shipped second stage judges the lesion model it was fitted for (as [model.anatomy] second_stage = true)."),
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

    from dicomnode.segmentation.reading import AnatomyReader

    try:
        kind = detect_format(data)
        if not as_json:
            typer.echo(f"{data}: {kind.value} format", err=True)
        # crops are scored by the lesion network alone: no map to load for them
        reader = AnatomyReader.default(device, second_stage) if anatomy and kind is not DataFormat.BS80K_CROPS \
            else None
        if kind in (DataFormat.BS80K_WHOLEBODY, DataFormat.BS80K_CROPS):
            from dicomnode.train.realeval import evaluate_bs80k

            if len(weights) != 1 or subset is not Subset.all or record:
                raise ValueError("BS-80K folders are scored for one model on all studies (no --subset, --record-in-card)")
            scores = evaluate_bs80k(weights[0], data, out, device=device, reader=reader)
            typer.echo(json.dumps(scores, indent=2) if as_json else "\n".join(
                f"{k.replace('_', ' ')}: {v:.3f}" if isinstance(v, float) else f"{k.replace('_', ' ')}: {v}"
                for k, v in scores.items() if not isinstance(v, (dict, list))))
            typer.echo(f"report: {out / 'bs80k.json'}")
            return
        evaluation, report = evaluate_folder(weights, data, out, runs=runs, seed=seed, subset=subset.value, device=device,
                                             reader=reader)
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

    studies = evaluation.first["studies"]
    table = Table(title=f"{studies} studies; {len(evaluation.runs)} runs ({evaluation.runs_kind})")
    table.add_column("over")
    for name in evaluation.across_runs:
        table.add_column(name.replace("_", " "))
    table.add_row("all studies", *(f"{v:.3f}" for v in evaluation.headline.values()))
    table.add_row("the runs: mean ± std",
                  *(f"{v['mean']:.3f} ± {v['std']:.3f}" for v in evaluation.across_runs.values()))
    Console().print(table)
    typer.echo(f"report: {report}")


@app.command()
def segment(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Folder for the result objects and summary.json / summary.md."),
    config: Path | None = CONFIG,
    weights: str | None = typer.Option(None, "--weights", help='The planar model: "default", "threshold" or a '
                                       "model path (default: [model] weights; the others: [model.*])."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: [model] device)."),
    unvalidated_results: bool | None = typer.Option(
        None, "--unvalidated-results/--validated-only", help="Write the results of models not validated on real "
        "scans (SPECT/CT, SPECT-only), their SR saying so (default: [model] unvalidated_results)."),
) -> None:
    """The node's pipeline on files, offline: results and a summary; exit 1 if a study failed."""
    node = node_config(config)
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        typer.echo(f"error: no such file or folder: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    from dicomnode.pipeline.models import NodeModels
    from dicomnode.tools.offline import segment_files

    overrides = {key: value for key, value in (("weights", weights), ("device", device),
                                               ("unvalidated_results", unvalidated_results)) if value is not None}
    models = NodeModels(node.model.model_copy(update=overrides))
    try:
        models.load_all()
    except (OSError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: cannot load the models: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = segment_files(files, out, models, node.results)
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
