"""Studies with lesion labels, read from a folder the way production reads them.

Four folder kinds are recognised (:func:`detect_format`); BS-80K whole-body and crop folders are
read by :mod:`dicomnode.train.bs80k`, the others here:

- **Simulated** (``dicomnode synth``): ``DIR/manifest.json``, ``DIR/<study>/*.dcm`` and
  ``DIR/<study>/truth.npz`` (uint8 masks per view in the stored layout, keys ``anterior`` /
  ``posterior``). The DICOM goes through :func:`dicomnode.segmentation.views.load_scan` like any camera's.
- **DICOM**: any tree of NM Image Storage files. Labels come from DICOM SEG objects in the tree
  (:mod:`dicomnode.train.seglabels`, e.g. physician corrections sent back to the node) or LabelMe JSON files
  (:mod:`dicomnode.train.labelme`). Studies without a label are kept as *unlabelled* (the semi-supervised
  regime uses them; the supervised presets skip them).

Every label is a uint8 0/1 mask in the **stored layout** of the source frame, exactly what a SEG
references, so the same geometry code (:mod:`dicomnode.segmentation.preprocess`) takes it to the model grid.
A study that cannot be read is skipped with a warning that says why; the summary is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import NuclearMedicineImageStorage, SegmentationStorage

from dicomnode.segmentation.scan import BoneScan, View
from dicomnode.segmentation.views import ViewError, load_scan

from .study import LabelledStudy, TruthLesion
from .labelme import LabelMeAnnotation, LabelMeError, is_labelme, read_labelme
from .bs80k import Crop, crop_label_files, load_crop_folder, load_wholebody_folder
from .seglabels import HUMAN_ALGORITHM_TYPES, SegLabel, SegLabelError, read_seg_labels

log = logging.getLogger(__name__)


class DataFormat(str, Enum):
    """The folder formats training and evaluation read (:func:`detect_format`)."""

    SYNTH = "synth"  # dicomnode synth: manifest.json, DICOM, truth.npz
    BS80K_WHOLEBODY = "bs80k-wholebody"  # BS-80K two-frame files with Pascal VOC boxes
    BS80K_CROPS = "bs80k-crops"  # BS-80K crop folders with a label file (image-level labels)
    DICOM = "dicom"  # NM Image Storage with DICOM SEG or LabelMe labels


SOURCE_CITATIONS = {
    DataFormat.BS80K_WHOLEBODY: "BS-80K whole-body scans with lesion boxes (Huang et al., 'BS-80K: The first large "
                                "open-access dataset of bone scan images', Comput Biol Med 151:106221, 2022; "
                                "West China Hospital)",
    DataFormat.BS80K_CROPS: "BS-80K chest crops with image-level labels (Huang et al., Comput Biol Med 151:106221, 2022)",
    DataFormat.SYNTH: "dicomnode synth simulated studies (docs/simulation.md)",
    DataFormat.DICOM: "NM DICOM studies with SEG or LabelMe labels",
}


def describe_sources(data: "TrainingData") -> list[dict[str, object]]:
    """What a model card says of each data folder: its format, where it comes from, how much of it
    (folder names only: paths are not patient data but say nothing to another site)."""
    out = []
    for folder, kind in data.formats.items():
        fmt = DataFormat(kind)
        entry: dict[str, object] = {"folder": Path(folder).name, "format": kind, "source": SOURCE_CITATIONS[fmt]}
        if fmt is DataFormat.BS80K_CROPS:
            entry["crops"] = len(data.crops)
        out.append(entry)
    return out


def detect_format(root: Path | str) -> DataFormat:
    """Which of the :class:`DataFormat` folders ``root`` is (first signature that matches)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if (root / "manifest.json").is_file():
        return DataFormat.SYNTH
    if crop_label_files(root):
        return DataFormat.BS80K_CROPS
    if any(root.glob("*/*_ant.xml")) or any(root.glob("*/*_post.xml")):
        return DataFormat.BS80K_WHOLEBODY
    return DataFormat.DICOM


def load_studies(root: Path | str, *, accept_automatic_seg: bool = False) -> list[LabelledStudy]:
    """All whole-body studies under ``root``, labelled where a label exists, in a stable order."""
    root = Path(root)
    kind = detect_format(root)
    if kind is DataFormat.SYNTH:
        studies = load_synth_folder(root)
    elif kind is DataFormat.BS80K_WHOLEBODY:
        studies = load_wholebody_folder(root)
    elif kind is DataFormat.BS80K_CROPS:
        raise ValueError(f"{root} holds BS-80K crops with image-level labels, not whole-body studies")
    else:
        studies = load_dicom_folder(root, accept_automatic_seg=accept_automatic_seg)
    if not studies:
        raise ValueError(f"no usable bone-scan studies under {root} ({kind.value} format)")
    labelled = sum(s.labelled for s in studies)
    log.info("%s (%s format): %d studies (%d labelled, %d unlabelled), %d patients", root, kind.value,
             len(studies), labelled, len(studies) - labelled, len({s.patient_id for s in studies}))
    return studies


@dataclass(frozen=True)
class TrainingData:
    """Whole-body studies and image-level crops from one or more folders, with each folder's format."""

    studies: list[LabelledStudy]
    crops: list[Crop]
    formats: dict[str, str]  # folder → DataFormat value


def load_training_data(roots: Sequence[Path | str]) -> TrainingData:
    """Every folder in ``roots`` by its detected format. Study keys and patient IDs are prefixed with
    the folder's position when several folders are given, so two sources never share a patient."""
    studies: list[LabelledStudy] = []
    crops: list[Crop] = []
    formats: dict[str, str] = {}
    for index, root in enumerate(roots):
        kind = detect_format(root)
        formats[str(root)] = kind.value
        log.info("%s: %s format", root, kind.value)
        prefix = f"{index}:" if len(roots) > 1 else ""
        if kind is DataFormat.BS80K_CROPS:
            crops += [dataclasses.replace(c, key=prefix + c.key, patient_id=prefix + c.patient_id)
                      for c in load_crop_folder(Path(root))]
        else:
            studies += [dataclasses.replace(s, key=prefix + s.key, patient_id=prefix + s.patient_id)
                        for s in load_studies(root)]
    return TrainingData(studies, crops, formats)


# --- simulated folders -----------------------------------------------------------------------------


def _manifest_lesions(entry: Mapping[str, Any]) -> tuple[TruthLesion, ...]:
    """The lesions ``dicomnode synth`` recorded, one per view in which the lesion is visible (only
    those are in that view's truth mask; see :mod:`dicomnode.synth.simulate`, visibility rule)."""
    lesions = []
    for raw in entry.get("lesions") or []:
        row, column = raw["position_px"]
        for view in View:
            if raw.get("visible", {}).get(view.value, True):
                lesions.append(TruthLesion(view, str(raw.get("bone", "unknown")), float(raw["size_mm"]),
                                           (float(row), float(column))))
    return tuple(lesions)


def load_synth_folder(root: Path) -> list[LabelledStudy]:
    """Studies written by ``dicomnode synth``: DICOM through ``load_scan``, truth from ``truth.npz``.

    Folder and file names come from the manifest and must stay inside ``root``.
    """
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    entries = manifest.get("studies") if isinstance(manifest, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{root}/manifest.json has no 'studies' list")
    base = root.resolve()
    studies = []
    for entry in entries:
        name = str(entry.get("folder", ""))
        try:
            folder = _inside(base, name)
            paths = [_inside(folder, str(f["file"])) for f in entry.get("files", [])]
            datasets = [pydicom.dcmread(p) for p in paths]
            scan = load_scan(datasets)
            with np.load(_inside(folder, str(entry.get("truth", "truth.npz")))) as truth:
                labels = {v: truth[v.value].astype(np.uint8) for v in scan.views if v.value in truth}
            patient = _patient_id(datasets)
            studies.append(LabelledStudy(name, patient, scan, labels, "synth", _manifest_lesions(entry)))
        except (ViewError, OSError, KeyError, TypeError, ValueError, InvalidDicomError) as exc:
            log.warning("%s: study %r skipped: %s", root, name, exc)
    return studies


def _inside(base: Path, name: str) -> Path:
    """``base / name``, refusing names that leave ``base`` (the manifest is input, not trusted)."""
    path = (base / name).resolve()
    if not name or base not in path.parents:
        raise ValueError(f"{name!r} does not name a file inside {base}")
    return path


def _patient_id(datasets: list[Dataset]) -> str:
    """The one non-empty Patient ID (0010,0020) of a study's instances; the split is by patient."""
    patients = {str(ds.get("PatientID", "")).strip() for ds in datasets}
    if len(patients) != 1 or "" in patients:
        raise ValueError(f"needs exactly one non-empty Patient ID, has {sorted(patients - {''})}")
    return patients.pop()


# --- DICOM trees with SEG / LabelMe labels ---------------------------------------------------------


def _read_tree(root: Path) -> tuple[dict[str, list[Dataset]], list[Dataset], list[Path], dict[Path, str]]:
    nm: dict[str, list[Dataset]] = defaultdict(list)
    segs: list[Dataset] = []
    labelme: list[Path] = []
    sop_of_path: dict[Path, str] = {}
    ignored = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() == ".json":
            if is_labelme(path):
                labelme.append(path)
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError):
            ignored += 1
            continue
        sop_class = ds.get("SOPClassUID")
        if sop_class == NuclearMedicineImageStorage:
            nm[str(ds.get("StudyInstanceUID", ""))].append(ds)
            sop_of_path[path.resolve()] = str(ds.get("SOPInstanceUID", ""))
        elif sop_class == SegmentationStorage:
            segs.append(ds)
        else:
            ignored += 1
    if ignored:
        log.info("%s: %d files are neither NM images nor SEG nor LabelMe; ignored", root, ignored)
    return nm, segs, labelme, sop_of_path


def _view_of_frame(scan: BoneScan, sop_uid: str, frame: int) -> View | None:
    for view, image in scan.views.items():
        if image.source.sop_instance_uid == sop_uid and image.source.frame_number == frame:
            return view
    return None


def _rank(label: SegLabel) -> tuple[bool, str]:
    return bool(label.algorithm_types & HUMAN_ALGORITHM_TYPES), label.content_datetime


def seg_masks(scan: BoneScan, labels: list[SegLabel], key: str) -> dict[View, np.ndarray]:
    """The chosen SEG mask per view: human labels first, then the newest (Content Date/Time)."""
    chosen: dict[View, SegLabel] = {}
    for label in labels:
        view = _view_of_frame(scan, label.source_sop_instance_uid, label.source_frame_number)
        if view is None:
            continue
        source = scan.views[view].source
        if label.mask.shape != (source.rows, source.columns):
            log.warning("%s: SEG %s mask %s does not match the %s frame %s; skipped", key,
                        label.seg_sop_instance_uid, label.mask.shape, view.value,
                        (source.rows, source.columns))
            continue
        current = chosen.get(view)
        if current is None or _rank(label) > _rank(current):
            chosen[view] = label
    return {view: label.mask.astype(np.uint8) for view, label in chosen.items()}


def _annotations_by_instance(
    paths: list[Path], sop_of_path: Mapping[Path, str], root: Path
) -> dict[str, list[LabelMeAnnotation]]:
    """Every readable LabelMe file, once, keyed by the SOP Instance UID of the NM file it annotates."""
    by_instance: dict[str, list[LabelMeAnnotation]] = defaultdict(list)
    for path in paths:
        try:
            annotation = read_labelme(path)
        except LabelMeError as exc:
            log.warning("%s", exc)
            continue
        sop_uid = sop_of_path.get(annotation.image_path)
        if sop_uid is None:
            log.warning("%s: %s annotates %s, which is not an NM image under %s; skipped",
                        path, path.name, annotation.image_path.name, root)
            continue
        by_instance[sop_uid].append(annotation)
    return by_instance


def _labelme_masks(
    scan: BoneScan, annotations: Mapping[str, list[LabelMeAnnotation]], key: str
) -> dict[View, np.ndarray]:
    """The union of a study's LabelMe masks per view (checks in :mod:`dicomnode.train.labelme`)."""
    masks: dict[View, np.ndarray] = {}
    for sop_uid in {image.source.sop_instance_uid for image in scan.views.values()}:
        views = [v for v, im in scan.views.items() if im.source.sop_instance_uid == sop_uid]
        for annotation in annotations.get(sop_uid, []):
            path = annotation.path
            if len(views) > 1 and annotation.view is None:
                log.warning("%s: %s annotates an instance with both views but its flags name "
                            "neither 'anterior' nor 'posterior'; skipped", key, path)
                continue
            view = annotation.view if annotation.view is not None else views[0]
            if view not in views:
                log.warning("%s: %s flags %s but the instance holds the %s view; skipped", key, path,
                            view.value, views[0].value)
                continue
            source = scan.views[view].source
            if (annotation.rows, annotation.columns) != (source.rows, source.columns):
                log.warning("%s: %s is %d×%d but the %s frame is %d×%d; skipped", key, path,
                            annotation.rows, annotation.columns, view.value, source.rows, source.columns)
                continue
            masks[view] = masks.get(view, np.zeros((source.rows, source.columns), np.uint8)) | annotation.mask()
    return masks


def load_dicom_folder(root: Path, *, accept_automatic_seg: bool = False) -> list[LabelledStudy]:
    """NM studies under ``root`` with their SEG or LabelMe labels (SEG wins where both exist)."""
    nm, segs, labelme, sop_of_path = _read_tree(root)
    annotations = _annotations_by_instance(labelme, sop_of_path, root)
    seg_labels: list[SegLabel] = []
    for ds in segs:
        try:
            seg_labels.extend(read_seg_labels(ds, accept_automatic=accept_automatic_seg))
        except (SegLabelError, ValueError, AttributeError) as exc:
            log.warning("%s: SEG %s unusable: %s", root, ds.get("SOPInstanceUID", "?"), exc)
    studies = []
    for study_uid, datasets in sorted(nm.items()):
        key = study_uid or "(no Study Instance UID)"
        try:
            scan = load_scan(datasets)
        except ViewError as exc:
            log.warning("%s: study %s skipped: %s", root, key, exc)
            continue
        try:
            patient = _patient_id(datasets)
        except ValueError as exc:
            log.warning("%s: study %s skipped: %s", root, key, exc)
            continue
        labels = seg_masks(scan, seg_labels, key)
        sources = ["SEG"] if labels else []
        for view, mask in _labelme_masks(scan, annotations, key).items():
            if view in labels:
                log.info("%s: %s view has both a SEG and a LabelMe label; the SEG is used", key, view.value)
            else:
                labels[view] = mask
                if "LabelMe" not in sources:
                    sources.append("LabelMe")
        studies.append(LabelledStudy(key, patient, scan, labels, "+".join(sources) or "none"))
    return studies
