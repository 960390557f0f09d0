"""Write a simulated study as NM Image Storage files, the way dual-head cameras send whole-body scans.

Two layouts (both allowed by PS3.3 C.8.4; docs/dicom.md):

* ``multiframe``: one instance, NumberOfFrames = 2, Frame Increment Pointer = Energy Window Vector
  \\ Detector Vector (PS3.3 C.8.4.8.1.1: required for STATIC and WHOLE BODY), Detector Vector
  [1, 2] and one Detector Information Sequence item per frame (C.8.4.10.1: item *n* describes the
  frames whose Detector Vector value is *n*), each with its View Code Sequence (CID 26: SCT
  399321004 anterior projection, SCT 399001007 posterior projection).  Patient Orientation is
  empty because it differs between the frames (the view codes say it).
* ``split``: one instance per view, both in **one series** (GE's practice in the NEMA WG04 NM1
  sample: one view per instance), NumberOfFrames = 1, Detector Vector [1], a single Detector
  Information Sequence item with the view code, Patient Orientation L\\F (anterior) or R\\F
  (posterior, stored as seen from behind) (C.7.6.1.1.1).

Common content: Image Type ORIGINAL\\PRIMARY\\WHOLE BODY\\EMISSION (C.8.4.9.1.1), 16-bit unsigned
counts with no rescale (C.8.4.7), Actual Frame Duration, Scan Velocity, Scan Length and Whole Body
Technique (1C for WHOLE BODY, C.8.4.9), an Energy Window Information Sequence for the 20 % window
at 140 keV (126–154 keV) and a Radiopharmaceutical Information Sequence for 99mTc medronate (SCT
96390006, CID 25; radionuclide SCT 72454006 ^99m^Technetium, CID 18; intravenous route SCT
47625008, CID 11).  Patient orientation codes (C.8.4.6): recumbent (SCT 102538003), supine (SCT
40199007), head first (SCT 102540008).  UIDs derive deterministically from the seed and the study
index (pydicom ``generate_uid`` with entropy sources).  Files are written as explicit VR little
endian Part 10 files (``enforce_file_format=True``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

import dicomnode
from dicomnode.synth.simulate import SimulatedStudy
from dicomnode.segmentation.scan import View

MANUFACTURER = "dicomnode-synth"
VIEW_CODES = {View.ANTERIOR: codes.cid26.AnteriorProjection, View.POSTERIOR: codes.cid26.PosteriorProjection}
PATIENT_ORIENTATION = {View.ANTERIOR: ["L", "F"], View.POSTERIOR: ["R", "F"]}
VIEW_LABEL = {View.ANTERIOR: "ANT", View.POSTERIOR: "POST"}
ENERGY_WINDOW_KEV = (126.0, 154.0)  # 140 keV ± 10 % (20 % window; EANM: 15–20 %)
BASE_DATE = dt.datetime(2024, 1, 8, 9, 0, 0)


@dataclass(frozen=True)
class StudyIdentity:
    """Who and what a simulated study is in DICOM terms (all deterministic from seed and index)."""

    seed: int
    index: int  # 1-based study number within the run

    def uid(self, *what: str) -> str:
        return generate_uid(entropy_srcs=[MANUFACTURER, str(self.seed), str(self.index), *what])

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def series_uid(self) -> str:
        return self.uid("series")

    @property
    def patient_name(self) -> str:
        return f"SYNTH^{self.index:04d}"

    @property
    def patient_id(self) -> str:
        return f"SYNTH-{self.seed}-{self.index:04d}"

    @property
    def accession(self) -> str:
        return f"S{self.seed % 100000:05d}{self.index:05d}"

    @property
    def acquired(self) -> dt.datetime:
        return BASE_DATE + dt.timedelta(days=self.index - 1, minutes=17 * (self.seed % 20))


def _code(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _date(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d")


def _time(moment: dt.datetime) -> str:
    return moment.strftime("%H%M%S")


def _detector_item(view: View) -> Dataset:
    """One Detector Information Sequence item (PS3.3 C.8.4.10)."""
    item = Dataset()
    item.CollimatorGridName = "LEHR"
    item.CollimatorType = "PARA"
    item.FieldOfViewShape = "RECTANGLE"
    item.FieldOfViewDimensions = [540, 400]
    item.FocalDistance = None  # Type 2; parallel-hole collimator
    item.ImagePositionPatient = None  # Type 2; planar whole-body frame has no patient geometry
    item.ImageOrientationPatient = None
    item.ViewCodeSequence = Sequence([_code(VIEW_CODES[view])])
    return item


def isotope_sequences(ident: StudyIdentity, hours_post_injection: float,
                      activity_mbq: float) -> tuple[Sequence, Sequence]:
    """Energy Window and Radiopharmaceutical Information Sequences (PS3.3 C.8.4.11) of a 99mTc-MDP
    acquisition ``hours_post_injection`` after an injection of ``activity_mbq``."""
    window = Dataset()
    window.EnergyWindowName = "Tc99m 20%"
    rng = Dataset()
    rng.EnergyWindowLowerLimit = f"{ENERGY_WINDOW_KEV[0]:.1f}"
    rng.EnergyWindowUpperLimit = f"{ENERGY_WINDOW_KEV[1]:.1f}"
    window.EnergyWindowRangeSequence = Sequence([rng])
    injected = ident.acquired - dt.timedelta(hours=hours_post_injection)
    pharm = Dataset()
    pharm.RadionuclideCodeSequence = Sequence([_code(codes.cid18._99mTechnetium)])
    pharm.Radiopharmaceutical = "Tc-99m MDP"
    pharm.RadiopharmaceuticalRoute = "Intravenous"
    pharm.AdministrationRouteCodeSequence = Sequence([_code(codes.cid11.IntravenousRoute)])
    pharm.RadiopharmaceuticalStartTime = _time(injected)
    pharm.RadionuclideTotalDose = f"{activity_mbq:.1f}"  # MBq
    pharm.RadiopharmaceuticalCodeSequence = Sequence([_code(codes.cid25.TechnetiumTc99mMedronate)])
    return Sequence([window]), Sequence([pharm])


def _patient_orientation_codes(ds: Dataset) -> None:
    """NM/PET Patient Orientation module (PS3.3 C.8.4.6): supine, head first."""
    orientation = _code(codes.cid19.Recumbent)
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code(codes.cid20.Supine)])
    ds.PatientOrientationCodeSequence = Sequence([orientation])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code(codes.cid21.Headfirst)])


def part10_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information (PS3.10 §7.1) of a simulated instance, written explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def new_instance(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An empty simulated instance: file meta, Latin-1 character set, SOP Common (PS3.3 C.12.1)."""
    ds = Dataset()
    ds.file_meta = part10_meta(sop_class_uid, sop_instance_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_instance_uid
    return ds


def set_general_study(ds: Dataset, ident: StudyIdentity, description: str) -> None:
    """General Study (PS3.3 C.7.2.1), and every date/time of the instance at the acquisition."""
    acquired = ident.acquired
    ds.StudyInstanceUID = ident.study_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _date(acquired)
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(acquired)
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{ident.index:04d}"
    ds.AccessionNumber = ident.accession
    ds.StudyDescription = description


def nm_image(frames: np.ndarray, views: tuple[View, ...], sop_instance_uid: str, *, spacing_mm: float,
             instance_number: int) -> Dataset:
    """The image modules of a whole-body NM Image Storage instance whose frames (stored layout, an
    unsigned or signed 8- or 16-bit array ``(frames, rows, columns)``) are ``views``, in that order.

    General Image (C.7.6.1), NM Image (C.8.4.9) without acquisition timing, Image Pixel (C.7.6.3,
    C.8.4.7), Multi-frame (C.7.6.6, C.8.4.8), NM Detector (C.8.4.10) with a CID 26 view code per item,
    NM/PET Patient Orientation (C.8.4.6). Patient, study, series and acquisition are the caller's.
    """
    if not views or len(views) != len(frames):
        raise ValueError(f"{len(frames)} frame(s) for view(s) {[v.value for v in views]}")
    ds = new_instance(NuclearMedicineImageStorage, sop_instance_uid)
    ds.Modality = "NM"
    ds.BodyPartExamined = "WHOLEBODY"
    _patient_orientation_codes(ds)
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.PatientOrientation = PATIENT_ORIENTATION[views[0]] if len(views) == 1 else None
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence([])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated = ds.BitsStored = 8 * frames.dtype.itemsize
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 1 if frames.dtype.kind == "i" else 0
    ds.PixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
    ds.NumberOfFrames = len(views)
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # EnergyWindowVector \ DetectorVector
    ds.EnergyWindowVector = [1] * len(views)
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = list(range(1, len(views) + 1))
    ds.NumberOfDetectors = len(views)
    ds.DetectorInformationSequence = Sequence([_detector_item(v) for v in views])
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    return ds


def nm_dataset(study: SimulatedStudy, ident: StudyIdentity, views: tuple[View, ...],
               instance_number: int) -> Dataset:
    """An NM Image Storage instance of a simulated study holding ``views`` as its frames (in that order)."""
    if not views:
        raise ValueError("an NM instance needs at least one view")
    acquired = ident.acquired
    p, acq = study.patient, study.acquisition
    frames = np.stack([study.images[v] for v in views]).astype("<u2")
    ds = nm_image(frames, views, ident.uid("instance", *(v.value for v in views)),
                  spacing_mm=study.spacing_mm, instance_number=instance_number)
    # Patient (C.7.1.1)
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = f"{acquired.year - p.age_years:04d}0101"
    ds.PatientSex = p.sex
    ds.PatientAge = f"{p.age_years:03d}Y"
    ds.PatientSize = f"{p.height_mm / 1000:.2f}"
    ds.PatientWeight = f"{22.0 * p.build ** 2 * (p.height_mm / 1000) ** 2:.1f}"  # BMI 22 × build²
    set_general_study(ds, ident, "NM Bone Scan Whole Body")
    # General Series (C.7.3.1)
    ds.SeriesInstanceUID = ident.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "WB Bone ANT/POST"
    # General Equipment (C.7.5.1)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "bone-scan simulator"
    ds.SoftwareVersions = dicomnode.__version__
    ds.DeviceSerialNumber = "SYNTH-0001"
    ds.StationName = "SYNTHCAM"
    # NM Image (C.8.4.9): what this acquisition was
    ds.ImageID = "WB " + "+".join(VIEW_LABEL[v] for v in views)
    ds.CountsAccumulated = int(sum(study.total_counts[v] for v in views))
    ds.ActualFrameDuration = int(round(acq.duration_s * 1000))  # ms
    ds.ScanVelocity = f"{acq.scan_speed_cm_min * 10 / 60:.3f}"  # mm/s
    ds.WholeBodyTechnique = ["1PS", "PCN"]  # one pass, patient contour following
    ds.ScanLength = int(round(acq.scan_length_mm))
    # NM Isotope (C.8.4.11)
    ds.EnergyWindowInformationSequence, ds.RadiopharmaceuticalInformationSequence = isotope_sequences(
        ident, acq.hours_post_injection, acq.activity_mbq)
    return ds


def write_nm_files(study: SimulatedStudy, ident: StudyIdentity, folder: Path, layout: str) -> list[dict]:
    """Write the study's NM file(s) into ``folder``; return one manifest entry per file."""
    if layout == "multiframe":
        plan = [("wholebody.dcm", (View.ANTERIOR, View.POSTERIOR))]
    elif layout == "split":
        plan = [("anterior.dcm", (View.ANTERIOR,)), ("posterior.dcm", (View.POSTERIOR,))]
    else:
        raise ValueError(f"layout must be 'multiframe' or 'split', got {layout!r}")
    entries = []
    for number, (name, views) in enumerate(plan, start=1):
        ds = nm_dataset(study, ident, views, instance_number=number)
        ds.save_as(folder / name, enforce_file_format=True)
        entries.append({"file": name, "sop_instance_uid": ds.SOPInstanceUID,
                        "frames": {str(i): v.value for i, v in enumerate(views, start=1)}})
    return entries
