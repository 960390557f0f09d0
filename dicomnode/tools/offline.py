"""``dicomnode segment FILES… --out DIR``: the node's pipeline on files, offline (no network, no database).

The same steps as the worker (:func:`dicomnode.pipeline.processing.process_study`: every acquisition,
planar whole body, SPECT/CT and SPECT-only, segmented by its kind's model → DICOM results) for every
study found among the input files (folders are searched recursively; files that are not DICOM are
listed as skipped). Output, for each study::

    DIR/<StudyInstanceUID>/<KIND>-<SOPInstanceUID>.dcm     the result objects (SEG, GSPS, SR, SC)
    DIR/summary.json                                       per study: views, lesions, burden, files
    DIR/summary.md                                         the same for a person

Folder names come only from validated UIDs (PS3.5 §9.1); a study whose UID is not valid, or whose
views cannot be read, is reported in the summary with the reason and no objects, and the command
exits non-zero. A study's summary describes its first processed acquisition (its kind's ``describe``,
:data:`dicomnode.pipeline.kinds.KINDS`): for a planar one, lesion sites and the approximate Bone Scan
Index of :mod:`dicomnode.pipeline.results.planar.burden` (the same numbers the SR carries).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.dicom.uids import UIDError, check_uid
from dicomnode.pipeline.kinds import KINDS
from dicomnode.pipeline.models import PLANAR, NodeModels
from dicomnode.pipeline.processing import UnreadableStudy, process_study
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.results.planar.burden import BSI_EXPLANATION
from dicomnode.segmentation.result import SegmentationResult

log = logging.getLogger(__name__)


@dataclass
class StudySummary:
    study_uid: str
    sources: list[str]
    error: str | None = None
    acquisitions: list[dict[str, str]] = field(default_factory=list)  # label, kind, outcome of each
    views: list[str] = field(default_factory=list)
    missing_views: list[str] = field(default_factory=list)
    lesions: list[dict[str, Any]] = field(default_factory=list)
    total_area_mm2: float = 0.0
    bsi_percent: float | None = None
    notes: list[str] = field(default_factory=list)
    objects: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Summary:
    algorithm: dict[str, str]
    studies: list[StudySummary] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(study.error is None for study in self.studies) and bool(self.studies)


def find_datasets(paths: Iterable[str | os.PathLike[str]]) -> tuple[dict[str, list[tuple[Path, Dataset]]],
                                                                    list[dict[str, str]]]:
    """Read every file (folders recursively); group DICOM datasets by Study Instance UID."""
    studies: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped = []
    for item in paths:
        root = Path(item)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                skipped.append({"file": str(path), "reason": "not a DICOM file"})
                continue
            except (OSError, EOFError, ValueError) as exc:
                skipped.append({"file": str(path), "reason": f"cannot be read ({exc})"})
                continue
            studies.setdefault(str(ds.get("StudyInstanceUID", "")), []).append((path, ds))
    return studies, skipped


def segment_files(paths: Sequence[str | os.PathLike[str]], out: Path, models: NodeModels,
                  options: ResultOptions) -> Summary:
    """Run the pipeline on ``paths`` and write results and summaries under ``out``."""
    studies, skipped = find_datasets(paths)
    algorithm = models.get(PLANAR).algorithm  # type: ignore[attr-defined]
    summary = Summary(algorithm={"name": algorithm.name, "version": algorithm.version,
                                 "network": algorithm.network}, skipped=skipped)
    out.mkdir(parents=True, exist_ok=True)
    for study_uid, found in studies.items():
        study = StudySummary(study_uid=study_uid, sources=[str(path) for path, _ in found])
        summary.studies.append(study)
        try:
            check_uid(study_uid, "Study Instance UID")
            runs = process_study([ds for _, ds in found], models, options)
        except (UIDError, UnreadableStudy) as exc:
            study.error = str(exc)
            log.warning("study not segmented: %s", exc)
            continue
        study.acquisitions = [{"label": run.acquisition.label, "kind": run.acquisition.kind.value,
                               "outcome": "processed" if run.processed else f"not processable: {run.reason}",
                               **({"model": _model(run.result)} if run.processed else {})} for run in runs]
        processed = [run for run in runs if run.processed]
        refused = [f"{run.acquisition.label}: not processable: {run.reason}" for run in runs if not run.processed]
        if not processed:
            study.error = "; ".join(refused)
            log.warning("study not segmented: %s", study.error)
            continue
        first = processed[0]
        for key, value in KINDS[first.acquisition.kind].describe(first.result).items():
            setattr(study, key, value)
        study.notes.extend(refused)
        folder = out / study_uid
        folder.mkdir(exist_ok=True)
        for (kind, dataset), data in ((obj, data) for run in processed
                                      for obj, data in zip(run.objects, run.encoded, strict=True)):
            sop_uid = check_uid(str(dataset.SOPInstanceUID), "SOP Instance UID")
            path = folder / f"{kind.value}-{sop_uid}.dcm"
            path.write_bytes(data)
            study.objects.append({"kind": kind.value, "file": str(path.relative_to(out)), "sop_instance_uid": sop_uid})
    (out / "summary.json").write_text(json.dumps(_as_dict(summary), indent=2))
    (out / "summary.md").write_text(render_markdown(summary))
    return summary


def _as_dict(summary: Summary) -> dict[str, Any]:
    return {
        "algorithm": summary.algorithm,
        "bsi_explanation": BSI_EXPLANATION,
        "studies": [vars(study) for study in summary.studies],
        "skipped": summary.skipped,
    }


def _model(result: Any) -> str:
    """The model of a processed acquisition's result (planar or volume), as the SR names it."""
    algorithm = result.algorithm
    reading = result.reading if isinstance(result, SegmentationResult) else None
    read = "" if reading is None else f"; hot spots {reading.describe()}"
    return f"{algorithm.name} {algorithm.version} ({algorithm.network}){read}"


def _planar_lesions(study: StudySummary) -> list[str]:
    missing = f"; missing: {', '.join(study.missing_views)}" if study.missing_views else ""
    bsi = "n/a" if study.bsi_percent is None else f"{study.bsi_percent:.2f} %"
    lines = [(f"Views: {', '.join(study.views)}{missing}. Lesions: {len(study.lesions)}, "
              f"total area {study.total_area_mm2:.1f} mm2, approximate BSI {bsi}."), ""]
    if study.lesions:
        lines += ["| view | # | site | area (mm2) | peak counts | mean counts |", "|---|---|---|---|---|---|"]
        lines += [f"| {lesion['view']} | {lesion['label']} | {lesion['site'] or '-'} | {lesion['area_mm2']} | "
                  f"{lesion['peak_counts']} | {lesion['mean_counts']} |" for lesion in study.lesions]
        lines.append("")
    return lines


def _volume_lesions(study: StudySummary) -> list[str]:
    lines = [f"Volume lesions: {len(study.lesions)}.", ""]
    if study.lesions:
        lines += ["| # | class | volume (mL) | voxels | probability |", "|---|---|---|---|---|"]
        lines += [f"| {lesion['label']} | {lesion['class']} | {lesion['volume_ml']} | {lesion['voxels']} | "
                  f"{lesion['probability']} |" for lesion in study.lesions]
        lines.append("")
    return lines


def render_markdown(summary: Summary) -> str:
    """The summary for a person (not for diagnostic use)."""
    algorithm = summary.algorithm
    lines = ["# dicomnode segment: summary", "",
             (f"Planar lesion model: {algorithm['name']} {algorithm['version']} ({algorithm['network']}); each "
              "acquisition names its model. Research use only, not for diagnostic use."), ""]
    for study in summary.studies:
        lines.append(f"## Study {study.study_uid}")
        lines.append("")
        if study.error is not None:
            lines += [f"**Not segmented:** {study.error}", ""]
            continue
        lines += [f"- acquisition {a['label']} ({a['kind']}{', ' + a['model'] if 'model' in a else ''}): "
                  f"{a['outcome']}" for a in study.acquisitions] + [""]
        lines += _volume_lesions(study) if study.views == ["volume"] else _planar_lesions(study)
        lines += [f"- {obj['kind']}: `{obj['file']}`" for obj in study.objects]
        lines += [f"- note: {note}" for note in study.notes]
        lines.append("")
    for item in summary.skipped:
        lines.append(f"Skipped `{item['file']}`: {item['reason']}")
    lines += ["", BSI_EXPLANATION, ""]
    return "\n".join(lines)
