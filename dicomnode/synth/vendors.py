"""Whole bone exams the way each camera vendor sends them (``dicomnode synth --vendor``).

A real exam is more than the whole-body scan (docs/dicom.md, "What a camera sends"). For each study
:func:`write_vendor_exam` writes, into the study's folder:

* the whole-body scan (one or two phases) with the vendor's header conventions (below);
* two-frame statics: anterior/posterior (Image Type STATIC) and an oblique pair (LAO/RPO);
* a TOMO acquisition (Image Type TOMO, projections) and its reconstruction (RECON TOMO, Frame
  Increment Pointer Slice Vector, geometry in the one Detector Information item, PS3.3 C.8.4.8.1.1,
  C.8.4.11), small matrices so that tests stay fast;
* a Secondary Capture screen save (8-bit RGB, Series Description ``SAVE_SCREENS``).

Vendor profiles (what is known, and from where):

* ``siemens`` (Symbia, as measured on site exports and described in docs/dicom.md): one two-frame
  whole-body instance; per Detector Information item a View Code in the private scheme ``99NMG``
  (``RT      ANT`` / ``LT     POST``) and an Image Orientation (Patient) (anterior ``1,0,0,0,0,-1``,
  posterior ``-1,0,0,0,0,-1``, obliques ``±0.7071,±0.7071,0,0,0,-1``); no Patient Orientation;
  Patient Position FFS; Series Description "Bone WB".
* ``ge`` (the NEMA WG04 "NM1" GE Millennium header): one view per instance, 16-bit signed pixels,
  no Detector Information Sequence and an empty Patient Orientation, so the views are known only by
  order within the acquisition (``ViewRule.ASSUMED`` of :mod:`dicomnode.segmentation.views`); a Frame of Reference UID.
* ``philips``: one view per instance with the standard SCT view codes and Patient Orientation
  ``L\\F`` / ``R\\F``. (No Philips sample or conformance statement was available: this is the
  standard's own layout, not a verified vendor habit.)
* ``mediso``: one two-frame instance with the legacy SRT view codes (G-5215 / G-5216) and UIDs whose
  components have leading zeros (``….20140305.091120.…``), as seen in the field; the rest is standard.
* ``generic``: the simulator's standard two-frame instance (SCT codes).

Only the whole-body instances carry the simulated lesions; the truth masks (``truth.npz``) are theirs.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    NuclearMedicineImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomnode.synth.dicom import StudyIdentity, nm_dataset, part10_meta
from dicomnode.synth.simulate import SimulatedStudy
from dicomnode.segmentation.scan import View

VENDORS = ("generic", "siemens", "ge", "philips", "mediso")

SIEMENS_VIEW_CODES = {
    "ANT": ("RT      ANT", "RT      ANT      LT"),
    "POST": ("LT     POST", "LT     POST     RT"),
    "LAO": ("LAO", "LAO"),
    "RPO": ("RPO", "RPO"),
}
DETECTOR_ORIENTATION = {
    "ANT": [1, 0, 0, 0, 0, -1],
    "POST": [-1, 0, 0, 0, 0, -1],
    "LAO": [0.7071, 0.7071, 0, 0, 0, -1],
    "RPO": [-0.7071, -0.7071, 0, 0, 0, -1],
}
LEGACY_CODES = {View.ANTERIOR: ("G-5215", "Anterior projection"), View.POSTERIOR: ("G-5216", "Posterior projection")}
_BOTH = (View.ANTERIOR, View.POSTERIOR)
_SPLIT = ((View.ANTERIOR,), (View.POSTERIOR,))
#: The views of each whole-body instance a vendor writes: one two-frame instance, or one per view.
WHOLE_BODY_INSTANCES: dict[str, tuple[tuple[View, ...], ...]] = {
    "generic": (_BOTH,), "siemens": (_BOTH,), "mediso": (_BOTH,), "ge": _SPLIT, "philips": _SPLIT,
}
STATIC_MATRIX = 128
TOMO_MATRIX, TOMO_FRAMES = 32, 16


def write_vendor_exam(study: SimulatedStudy, ident: StudyIdentity, folder: Path, vendor: str,
                      phases: int = 1) -> list[dict]:
    """Write one whole exam of ``vendor`` into ``folder``; one manifest entry per file, with its kind."""
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    if phases not in (1, 2):
        raise ValueError(f"phases must be 1 or 2, got {phases!r}")
    uid = _uid_maker(ident, vendor)
    entries: list[dict] = []
    number = 1
    for phase in range(1, phases + 1):
        for ds in _whole_body(study, ident, vendor, phase):
            ds = _identify(ds, uid, f"wb{phase}", number)
            entries.append(_save(ds, folder, f"wholebody_phase{phase}_{number}.dcm", "whole-body"))
            number += 1
    template = nm_dataset(study, ident, (View.ANTERIOR, View.POSTERIOR), instance_number=1)
    for name, views in (("static_ant_post", ("ANT", "POST")), ("static_lao_rpo", ("LAO", "RPO"))):
        ds = _identify(_static(template, views, vendor), uid, name, number)
        entries.append(_save(ds, folder, f"{name}.dcm", "static"))
        number += 1
    for name, ds, kind in (("tomo", _tomo(template), "tomo"), ("recon_tomo", _recon_tomo(template, uid), "recon-tomo")):
        ds = _identify(ds, uid, name, number)
        entries.append(_save(ds, folder, f"{name}.dcm", kind))
        number += 1
    ds = _identify(_screen_capture(template), uid, "screens", number)
    entries.append(_save(ds, folder, "save_screens.dcm", "secondary-capture"))
    return entries


# -- whole body ------------------------------------------------------------------------------------------


def _whole_body(study: SimulatedStudy, ident: StudyIdentity, vendor: str, phase: int) -> list[Dataset]:
    datasets = [nm_dataset(study, ident, views, instance_number=i)
                for i, views in enumerate(WHOLE_BODY_INSTANCES[vendor], start=1)]
    later = ident.acquired + dt.timedelta(hours=3 * (phase - 1))
    for ds in datasets:
        ds.AcquisitionDate, ds.AcquisitionTime = later.strftime("%Y%m%d"), later.strftime("%H%M%S")
        ds.SeriesNumber = phase
        if phase > 1:  # a later phase: more bone uptake relative to soft tissue
            frames = np.frombuffer(ds.PixelData, dtype="<u2").astype(np.float32) * 1.1
            ds.PixelData = np.clip(frames, 0, 65535).astype("<u2").tobytes()
        _PROFILES[vendor](ds)
    return datasets


def _siemens(ds: Dataset) -> None:
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS NM", "Encore2"
    ds.SeriesDescription, ds.PatientPosition = "Bone WB", "FFS"
    ds.PatientOrientation = None
    for item, label in zip(ds.DetectorInformationSequence, _labels(ds), strict=True):
        _siemens_detector(item, label)


def _siemens_detector(item: Dataset, label: str) -> None:
    value, meaning = SIEMENS_VIEW_CODES[label]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "99NMG", meaning
    item.ViewCodeSequence = Sequence([code])
    item.ImageOrientationPatient = DETECTOR_ORIENTATION[label]
    item.ImagePositionPatient = [0, 0, 0]


def _ge(ds: Dataset) -> None:
    ds.Manufacturer, ds.ManufacturerModelName = "GE MEDICAL SYSTEMS", "Millennium MG"
    ds.SeriesDescription = "Whole Body Bone"
    del ds.DetectorInformationSequence
    ds.PatientOrientation = None
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "frame-of-reference"])
    pixels = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelRepresentation = 1
    ds.PixelData = np.minimum(pixels, 32767).astype("<i2").tobytes()
    for keyword in ("ImageID", "ImageComments"):
        if keyword in ds:
            delattr(ds, keyword)


def _philips(ds: Dataset) -> None:
    ds.Manufacturer, ds.ManufacturerModelName = "Philips Medical Systems", "BrightView"
    ds.SeriesDescription = "Whole Body"


def _mediso(ds: Dataset) -> None:
    ds.Manufacturer, ds.ManufacturerModelName = "Mediso", "AnyScan"
    for item, view in zip(ds.DetectorInformationSequence, (View.ANTERIOR, View.POSTERIOR), strict=False):
        value, meaning = LEGACY_CODES[_view_of(item) or view]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "SRT", meaning
        item.ViewCodeSequence = Sequence([code])


def _generic(ds: Dataset) -> None:
    return None


_PROFILES: dict[str, Callable[[Dataset], None]] = {
    "generic": _generic, "siemens": _siemens, "ge": _ge, "philips": _philips, "mediso": _mediso,
}


def _labels(ds: Dataset) -> list[str]:
    return ["ANT" if _view_of(item) is View.ANTERIOR else "POST" for item in ds.DetectorInformationSequence]


def _view_of(item: Dataset) -> View | None:
    code = item.ViewCodeSequence[0].CodeValue if item.get("ViewCodeSequence") else ""
    return {"399321004": View.ANTERIOR, "399001007": View.POSTERIOR}.get(code)


# -- the rest of the exam -----------------------------------------------------------------------------


def _static(template: Dataset, views: tuple[str, str], vendor: str) -> Dataset:
    ds = copy.deepcopy(template)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.SeriesDescription = "Statics " + "/".join(views)
    ds.ImageID = "/".join(views)
    ds.Rows = ds.Columns = STATIC_MATRIX
    rng = np.random.default_rng(len(views[0]))
    ds.PixelData = rng.poisson(30, size=(2, STATIC_MATRIX, STATIC_MATRIX)).astype("<u2").tobytes()
    for item, label in zip(ds.DetectorInformationSequence, views, strict=True):
        if vendor == "siemens" or label in ("LAO", "RPO"):
            _siemens_detector(item, label)
    return ds


def _projection_pixels(frames: int) -> bytes:
    rng = np.random.default_rng(frames)
    return rng.poisson(20, size=(frames, TOMO_MATRIX, TOMO_MATRIX)).astype("<u2").tobytes()


def _tomo(template: Dataset) -> Dataset:
    """TOMO projections (PS3.3 C.8.4.8.1.1: Energy Window, Detector, Rotation, Angular View vectors)."""
    ds = _small_nm(template, ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"], "SPECT Bone")
    per_head = TOMO_FRAMES // 2
    ds.FrameIncrementPointer = [0x00540010, 0x00540020, 0x00540050, 0x00540090]
    ds.EnergyWindowVector = [1] * TOMO_FRAMES
    ds.DetectorVector = [1] * per_head + [2] * per_head
    ds.RotationVector = [1] * TOMO_FRAMES
    ds.AngularViewVector = list(range(1, per_head + 1)) * 2
    ds.NumberOfDetectors, ds.NumberOfRotations = 2, 1
    ds.DetectorInformationSequence = Sequence([_bare_detector(), _bare_detector()])
    ds.PixelData = _projection_pixels(TOMO_FRAMES)
    return ds


def _recon_tomo(template: Dataset, uid: Callable[[str], str]) -> Dataset:
    """An attenuation-corrected reconstruction: slices, geometry in the Detector Information item."""
    ds = _small_nm(template, ["DERIVED", "PRIMARY", "RECON TOMO", "EMISSION"], "SPECT Bone AC")
    ds.FrameIncrementPointer = 0x00540080  # Slice Vector
    ds.SliceVector = list(range(1, TOMO_FRAMES + 1))
    ds.NumberOfSlices = TOMO_FRAMES
    ds.SliceThickness = ds.SpacingBetweenSlices = "4.795"
    ds.PixelSpacing = ["4.795", "4.795"]
    ds.CorrectedImage = ["ATTN", "UNIF", "DECY"]
    ds.FrameOfReferenceUID = uid("frame-of-reference")
    item = _bare_detector()
    item.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    item.ImagePositionPatient = [-76.7, -76.7, -300.0]
    ds.DetectorInformationSequence = Sequence([item])
    for keyword in ("DetectorVector", "EnergyWindowVector", "NumberOfDetectors"):
        delattr(ds, keyword)
    ds.PixelData = _projection_pixels(TOMO_FRAMES)
    return ds


def _small_nm(template: Dataset, image_type: list[str], description: str) -> Dataset:
    ds = copy.deepcopy(template)
    ds.ImageType, ds.SeriesDescription, ds.ImageID = image_type, description, description
    ds.Rows = ds.Columns = TOMO_MATRIX
    ds.NumberOfFrames = TOMO_FRAMES
    for keyword in ("PatientOrientation", "WholeBodyTechnique", "ScanLength", "ScanVelocity"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _bare_detector() -> Dataset:
    item = Dataset()
    item.CollimatorGridName, item.CollimatorType = "LEHR", "PARA"
    item.ImagePositionPatient = None
    item.ImageOrientationPatient = None
    return item


def _screen_capture(template: Dataset) -> Dataset:
    """A camera screen save: Secondary Capture Image Storage (PS3.3 A.8.1), 8-bit RGB."""
    ds = Dataset()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                    "AccessionNumber", "StudyDescription", "Manufacturer"):
        if keyword in template:
            setattr(ds, keyword, copy.deepcopy(template.get(keyword)))
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality, ds.ConversionType = "NM", "WSD"
    ds.SeriesDescription = "SAVE_SCREENS"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.PatientOrientation = ""
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((64, 64, 3), 40, dtype=np.uint8).tobytes()
    return ds


# -- identity -------------------------------------------------------------------------------------------


def _uid_maker(ident: StudyIdentity, vendor: str) -> Callable[[str], str]:
    """Series and SOP Instance UIDs of the exam; Mediso's with a leading-zero component, as seen in the field."""
    if vendor != "mediso":
        return lambda what: ident.uid(vendor, what)

    def mediso(what: str) -> str:
        digits = int(ident.uid(what).replace(".", "")[-12:])
        return f"1.2.826.0.1.3680043.8.498.20140305.091120.{ident.seed}.{ident.index}.{digits}"[:64]

    return mediso


def _identify(ds: Dataset, uid: Callable[[str], str], name: str, number: int) -> Dataset:
    """New SOP Instance (and, except for the whole body, Series) UIDs and file meta for ``ds``."""
    ds.SeriesInstanceUID = uid(f"series-{name}")
    if not name.startswith("wb"):  # the whole-body series keep their phase number
        ds.SeriesNumber = 10 + number
    ds.SOPInstanceUID = uid(f"instance-{name}-{number}")
    ds.InstanceNumber = number
    ds.file_meta = part10_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds


def _save(ds: Dataset, folder: Path, name: str, kind: str) -> dict:
    ds.save_as(folder / name, enforce_file_format=True)
    entry: dict = {"file": name, "sop_instance_uid": str(ds.SOPInstanceUID), "kind": kind}
    if ds.SOPClassUID == NuclearMedicineImageStorage and kind == "whole-body":
        entry["frames"] = int(ds.NumberOfFrames)
    return entry
