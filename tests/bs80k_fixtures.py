"""Synthetic folders in the two BS-80K formats (never the real files, whose licence is unstated).

- :func:`write_wholebody`: ``<id>/<id>_<date>.dcm`` with the real files' incomplete headers (no SOP
  Class UID in the data set, private ``99LOCAL`` view codes ``AN`` / ``PO``, birth date ``00000101``,
  8-bit values in uint16), a small phantom with hot discs drawn into both views (the posterior
  stored mirrored), and Pascal VOC boxes around the discs (``Abnormal``) and the bladder (``Normal``).
- :func:`write_crops`: ``chestRANT`` / ``chestRPOST`` folders of 8-bit JPEG crops with a hot disc in
  the abnormal ones, and their ``<folder>.txt`` label files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid
from skimage.draw import disk



@dataclass(frozen=True)
class HotSpot:
    row: int  # canonical row
    column: int  # canonical column
    radius: int
    abnormal: bool = True


def phantom(rows: int, columns: int, spots: list[HotSpot], rng: np.random.Generator, level: float = 30.0) -> np.ndarray:
    """Canonical 8-bit-range counts: body, spine, bladder and hot discs, Poisson noise."""
    r = np.arange(rows)[:, None] / rows
    c = np.arange(columns)[None, :] / columns
    body = ((np.abs(c - 0.5) < 0.22) & (r > 0.03) & (r < 0.97)).astype(np.float32)
    spine = ((np.abs(c - 0.5) < 0.03) & (r > 0.1) & (r < 0.55)).astype(np.float32)
    expected = level * (0.3 * body + spine)
    for spot in spots:
        expected[disk((spot.row, spot.column), spot.radius, shape=expected.shape)] += level * (3.0 if spot.abnormal else 4.0)
    return np.clip(rng.poisson(expected), 0, 255).astype(np.float32)


def _voc(path: Path, image: str, rows: int, columns: int, boxes: list[tuple[str, int, int, int, int]]) -> None:
    objects = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, y0, x0, y1, x1 in boxes
    )
    path.write_text(f'<?xml version="1.0" ?><annotation><folder>BS-80K</folder><filename>{image}</filename>'
                    f"<size><width>{columns}</width><height>{rows}</height><depth>1</depth></size>{objects}</annotation>")


def write_wholebody(root: Path, patient: str, spots: list[HotSpot], *, rows: int = 256, columns: int = 64,
                    seed: int = 0, posterior_first: bool = False, margin: int = 3) -> Path:
    """One study folder; boxes are ``margin`` pixels around each disc, on each view's stored frame."""
    rng = np.random.default_rng(seed)
    anterior = phantom(rows, columns, spots, rng)
    posterior_stored = phantom(rows, columns, spots, rng)[:, ::-1]
    boxes = {}
    for suffix, mirrored in (("ant", False), ("post", True)):
        boxes[suffix] = []
        for spot in spots:
            column = columns - 1 - spot.column if mirrored else spot.column
            boxes[suffix].append(("Abnormal" if spot.abnormal else "Normal", spot.row - spot.radius - margin,
                                  column - spot.radius - margin, spot.row + spot.radius + margin,
                                  column + spot.radius + margin))
    return _write_study(root, patient, anterior, posterior_stored, boxes, posterior_first=posterior_first)


def write_simulated(root: Path, patient: str, study, *, margin: int = 3) -> Path:
    """A simulated study (:class:`dicomnode.synth.simulate.SimulatedStudy`) as a BS-80K study folder:
    an ``Abnormal`` box around each truth lesion and a ``Normal`` box around each mimic (the bladder,
    degenerative joints, ...), on each view's stored frame."""
    from scipy import ndimage

    from dicomnode.segmentation.scan import View

    boxes = {}
    for suffix, view in (("ant", View.ANTERIOR), ("post", View.POSTERIOR)):
        boxes[suffix] = []
        labels, _ = ndimage.label(study.truth[view] > 0)
        for rows_slice, cols_slice in ndimage.find_objects(labels):
            boxes[suffix].append(("Abnormal", max(rows_slice.start - margin, 0), max(cols_slice.start - margin, 0),
                                  rows_slice.stop - 1 + margin, cols_slice.stop - 1 + margin))
        for mimic, (row, column) in zip(study.mimics, study.mimic_positions_px):
            col = column if view is View.ANTERIOR else study.columns - 1 - column
            radius = mimic.radius_mm / study.spacing_mm + margin
            boxes[suffix].append(("Normal", max(int(row - radius), 0), max(int(col - radius), 0), int(row + radius),
                                  int(col + radius)))
    return _write_study(root, patient, study.images[View.ANTERIOR].astype(np.float32),
                        study.images[View.POSTERIOR].astype(np.float32), boxes, spacing=study.spacing_mm)


def _write_study(root: Path, patient: str, anterior: np.ndarray, posterior_stored: np.ndarray,
                 boxes: dict[str, list[tuple[str, int, int, int, int]]], *, posterior_first: bool = False,
                 spacing: float = 2.3976) -> Path:
    """The two-frame file with private view codes and one VOC file per view (``boxes["ant"]``,
    ``boxes["post"]``: (name, row0, column0, row1, column1) on the view's stored frame)."""
    rows, columns = anterior.shape
    frames = [posterior_stored, anterior] if posterior_first else [anterior, posterior_stored]
    stem = f"{patient}_20250628"
    folder = root / patient
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "NM", "unknown", f"{patient}_NBL", "00000101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames, ds.Rows, ds.Columns = 2, rows, columns
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    items = []
    for code, meaning in (("PO", "Posterior"), ("AN", "Anterior")) if posterior_first else (("AN", "Anterior"), ("PO", "Posterior")):
        view_code = Dataset()
        view_code.CodeValue, view_code.CodingSchemeDesignator, view_code.CodeMeaning = code, "99LOCAL", meaning
        item = Dataset()
        item.ViewCodeSequence = [view_code]
        items.append(item)
    ds.DetectorInformationSequence = items
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    pydicom.dcmwrite(folder / f"{stem}.dcm", ds, enforce_file_format=True)
    for suffix in ("ant", "post"):
        _voc(folder / f"{stem}_{suffix}.xml", f"{stem}_{suffix}.png", rows, columns, boxes[suffix])
    return folder / f"{stem}.dcm"


def write_crops(root: Path, labels: list[bool], *, rows: int = 96, columns: int = 40, seed: int = 0) -> Path:
    """``root/chestRANT`` and ``root/chestRPOST`` with one crop per label (same ``<n>`` = same patient)."""
    rng = np.random.default_rng(seed)
    for folder in ("chestRANT", "chestRPOST"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        lines = []
        for n, abnormal in enumerate(labels, start=1):
            expected = np.full((rows, columns), 12.0, np.float32)
            expected[::8, :] += 10.0  # ribs
            if abnormal:
                expected[disk((rows // 2, columns // 2), 4, shape=expected.shape)] += 90.0
            Image.fromarray(np.clip(rng.poisson(expected), 0, 255).astype(np.uint8)).save(root / folder / f"{n}.jpg", quality=95)
            lines.append(f"{n}.jpg\t{int(abnormal)}")
        (root / folder / f"{folder}.txt").write_text("\n".join(lines) + "\n")
    return root
