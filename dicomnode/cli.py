"""The ``dicomnode`` command line.

Each command is a thin wrapper: it parses options and calls the module that does the work, imported
inside the command so that ``dicomnode status`` does not pay for importing torch.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    name="dicomnode",
    help="A DICOM-native AI node for whole-body bone scintigraphy.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """A DICOM-native AI node for whole-body bone scintigraphy."""


class Layout(str, Enum):
    multiframe = "multiframe"
    split = "split"
    mixed = "mixed"


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
) -> None:
    """Simulate whole-body 99mTc-MDP bone scans as NM Image Storage files with lesion truth."""
    from dicomnode.synth import write_studies

    manifest = write_studies(
        out, studies=studies, seed=seed, layout=layout.value, png=png,
        rows=rows, columns=columns, spacing_mm=spacing,
    )
    typer.echo(f"wrote {len(manifest['studies'])} studies to {out}")


def main() -> None:
    app()
