"""Write a simulated SPECT/CT exam as a hybrid camera sends it: a CT series and an NM RECON TOMO volume.

Both share the study, the patient and one Frame of Reference (C.7.4.1), as a SPECT/CT camera's
CT and attenuation-corrected reconstruction do.

- **CT** (CT Image Storage, one instance per axial slice; PS3.3 A.3): Image Type
  ORIGINAL\\PRIMARY\\AXIAL, Image Plane (C.7.6.2: Image Orientation 1\\0\\0\\0\\1\\0, Image Position
  of each slice, Pixel Spacing, Slice Thickness, Slice Location), CT Image (C.8.2.1: 16-bit
  unsigned stored values, Rescale Intercept −1024, Slope 1, HU), Patient Position HFS; instance 1
  is the most superior slice, as scanners number a head-first helix.
- **NM** (NM Image Storage, one multi-frame instance; A.5): Image Type
  ORIGINAL\\PRIMARY\\RECON TOMO\\EMISSION (C.8.4.9.1.1), NM Multi-frame (C.8.4.8) with Frame Increment
  Pointer (0054,0080) Slice Vector and Number of Slices, the volume's Image Orientation/Position
  (Patient) inside its one Detector Information Sequence item (C.8.4.10), NM TOMO Acquisition
  (C.8.4.12: one Rotation Information item), NM Reconstruction (C.8.4.14: Spacing Between Slices,
  Slice Thickness, Reconstruction Diameter), Corrected Image ATTN\\SCAT\\DECY\\UNIF, 16-bit counts.
  Slice ``n`` lies at ``position + (n − 1) · spacing · (row × column)`` (:mod:`dicomnode.segmentation.volume`),
  i.e. the first slice is the most inferior.

Identity, dates and radiopharmaceutical come from the whole-body simulator's helpers
(:mod:`dicomnode.synth.dicom`), so both simulators write the same patient modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    NuclearMedicineImageStorage,
    generate_uid,
)

import dicomnode
from dicomnode.synth.dicom import (
    MANUFACTURER,
    StudyIdentity,
    _patient_orientation_codes,
    isotope_sequences,
    new_instance,
    set_general_study,
)
from dicomnode.segmentation.volume import SLICE_VECTOR_TAG, VolumeGeometry

HU_OFFSET = 1024
BODY_PART = "CHESTABDPELVIS"
"""Body Part Examined, a PS3.16 Annex L defined term covering lower thorax to pelvis."""


def _base(ident: StudyIdentity, sop_class: str, sop_uid: str, modality: str, series_uid: str, series_number: int,
          description: str, frame_of_reference: str) -> Dataset:
    ds = new_instance(sop_class, sop_uid)
    acquired = ident.acquired
    ds.PatientName, ds.PatientID = ident.patient_name, ident.patient_id
    ds.PatientBirthDate, ds.PatientSex = f"{acquired.year - 60:04d}0101", "O"
    set_general_study(ds, ident, "NM Bone SPECT-CT")
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.BodyPartExamined = BODY_PART
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "SPECT/CT simulator"
    ds.SoftwareVersions = dicomnode.__version__
    ds.DeviceSerialNumber = "SYNTH-0002"
    ds.StationName = "SYNTHSPECTCT"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def ct_datasets(ident: StudyIdentity, hu: np.ndarray, geometry: VolumeGeometry) -> list[Dataset]:
    """One CT Image Storage dataset per slice of ``hu`` (slice 0 the most inferior), instance 1 the top."""
    series_uid = ident.uid("ct-series")
    out = []
    slices = geometry.shape[0]
    for k in range(slices):
        number = slices - k
        ds = _base(ident, CTImageStorage, ident.uid("ct", str(k)), "CT", series_uid, 2, "CT AC 5mm",
                   geometry.frame_of_reference or "")
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in geometry.orientation]
        position = geometry.slice_position(k)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.SliceThickness = f"{geometry.slice_spacing:.4g}"
        ds.PixelSpacing = [f"{v:.6g}" for v in geometry.pixel_spacing]
        ds.Rows, ds.Columns = geometry.shape[1:]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -HU_OFFSET, 1, "HU"
        ds.KVP = 130
        ds.XRayTubeCurrent = 30
        ds.ConvolutionKernel = "B31s"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        stored = np.clip(np.rint(hu[k]) + HU_OFFSET, 0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()
        out.append(ds)
    return out


def nm_recon_dataset(ident: StudyIdentity, counts: np.ndarray, geometry: VolumeGeometry, *,
                     activity_mbq: float, hours_post_injection: float, fwhm_mm: float) -> Dataset:
    """The attenuation-corrected reconstruction as one NM Image Storage instance."""
    ds = _base(ident, NuclearMedicineImageStorage, ident.uid("nm-recon"), "NM", ident.uid("nm-series"), 3,
               "SPECT AC RECON", geometry.frame_of_reference or "")
    _patient_orientation_codes(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.InstanceNumber = 1
    ds.ImageID = "RECON AC"
    ds.CorrectedImage = ["ATTN", "SCAT", "DECY", "UNIF"]
    ds.AcquisitionContextSequence = Sequence([])
    ds.Rows, ds.Columns = geometry.shape[1:]
    ds.PixelSpacing = [f"{v:.6g}" for v in geometry.pixel_spacing]
    slices = geometry.shape[0]
    ds.NumberOfFrames = slices
    ds.FrameIncrementPointer = SLICE_VECTOR_TAG
    ds.SliceVector = list(range(1, slices + 1))
    ds.NumberOfSlices = slices
    ds.NumberOfEnergyWindows = 1
    ds.CountsAccumulated = int(counts.sum())
    ds.SpacingBetweenSlices = f"{geometry.slice_spacing:.6g}"
    ds.SliceThickness = f"{geometry.slice_spacing:.6g}"
    ds.ReconstructionDiameter = f"{geometry.shape[2] * geometry.pixel_spacing[1]:.1f}"
    ds.ConvolutionKernel = f"OSEM8i4s G{fwhm_mm:.0f}"
    ds.EnergyWindowInformationSequence, ds.RadiopharmaceuticalInformationSequence = isotope_sequences(
        ident, hours_post_injection, activity_mbq)
    detector = Dataset()
    detector.CollimatorGridName = "LEHR"
    detector.CollimatorType = "PARA"
    detector.FieldOfViewShape = "RECTANGLE"
    detector.FieldOfViewDimensions = [533, 387]
    detector.FocalDistance = None
    detector.ImageOrientationPatient = [f"{v:.6g}" for v in geometry.orientation]
    detector.ImagePositionPatient = [f"{v:.4f}" for v in geometry.origin]
    ds.DetectorInformationSequence = Sequence([detector])
    ds.NumberOfDetectors = 1
    rotation = Dataset()
    rotation.StartAngle = "0"
    rotation.AngularStep = "6"
    rotation.RotationDirection = "CW"
    rotation.ScanArc = "360"
    rotation.ActualFrameDuration = 15000
    rotation.NumberOfFramesInRotation = 60
    rotation.TableTraverse = "0"
    ds.RotationInformationSequence = Sequence([rotation])
    ds.NumberOfRotations = 1
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    ds.PixelData = counts.astype("<u2").tobytes()
    return ds


def write_exam_files(folder: Path, ct: list[Dataset], nm: Dataset) -> list[dict]:
    """Write ``ct/CT_0001.dcm…`` (by instance number) and ``spect.dcm``; return manifest entries."""
    (folder / "ct").mkdir(parents=True, exist_ok=True)
    entries = []
    for ds in ct:
        name = f"ct/CT_{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        entries.append({"file": name, "sop_instance_uid": ds.SOPInstanceUID})
    nm.save_as(folder / "spect.dcm", enforce_file_format=True)
    entries.append({"file": "spect.dcm", "sop_instance_uid": nm.SOPInstanceUID})
    return entries


def dose_report(template: Dataset) -> Dataset:
    """A minimal X-Ray Radiation Dose SR (PS3.3 A.35.8, TID 10001 root only) of ``template``'s study,
    as the CT of a SPECT/CT sends it with its slices; the node stores it and processes nothing in it."""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        if keyword in template:
            setattr(ds, keyword, template.get(keyword))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 997, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "113701", "DCM", "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContinuityOfContent = "SEPARATE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
