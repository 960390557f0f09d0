"""Result objects of a bone SPECT/CT segmentation (paper 003): the one entry the worker calls.

:func:`build_hybrid_results` takes the CT series (empty for a SPECT-only acquisition), the NM RECON
TOMO volume (or ``None``), and the class probabilities ``(3, slices, rows, columns)`` (background,
metastatic, benign) on the CT grid (slice 0 the most inferior, the order of
:func:`segmentation.volume.ct_geometry`) or, without a CT, on the NM volume's grid (the order of
:func:`segmentation.volume.nm_geometry`), and returns:

- a DICOM SEG on the CT series, or on the NM volume without one, with two segments, "Bone metastasis"
  and "Benign bone lesion" (:mod:`.hybrid_seg`);
- a TID 1500 SR with one volumetric group per lesion (volume, SPECT mean/max counts, CT mean HU where
  there is a CT, class, probability) and study-level counts per class (:mod:`.hybrid_sr`);
- a Secondary Capture with fused (or, without a CT, SPECT-only) axial and coronal slices and the
  lesions' contours (:mod:`.hybrid_sc`).

Lesions are the 26-connected components of the voxels whose most probable class is a lesion class;
a component's class is the lesion class most of its voxels take, its probability the mean
probability of that class over its voxels. The objects share the planar results' provenance
(:class:`~dicomnode.pipeline.results.common.Provenance`: UIDs derived from the study, the sources,
the version and the algorithm; series numbers by kind), which reads the study UID, the algorithm and
the threshold from its ``result``; :class:`HybridRun` gives it those three.

The SR refers to the SEG's segments, so it is written only together with the SEG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.results.common import Provenance, ResultOptions
from segmentation.networks.mtunet import CLASSES
from segmentation.result import Algorithm
from segmentation.volume import VolumeGeometry, ct_volume, nm_volume, resample

logger = logging.getLogger(__name__)

METASTATIC, BENIGN = CLASSES.index("metastatic"), CLASSES.index("benign")
SEGMENT_OF_CLASS = {METASTATIC: 1, BENIGN: 2}
"""SEG segment number of each lesion class."""


@dataclass(frozen=True)
class _Study:
    study_instance_uid: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HybridRun:
    """What :class:`Provenance` reads from a result: the study UID (``scan``), algorithm, threshold."""

    scan: _Study
    algorithm: Algorithm
    threshold: float = 0.5
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HybridLesion:
    number: int
    label: int
    """Class index (1 metastatic, 2 benign)."""
    voxels: int
    volume_ml: float
    probability: float
    spect_mean: float | None
    spect_max: float | None
    ct_mean_hu: float | None
    """None without a CT."""
    centroid: tuple[float, float, float]
    """(slice, row, column) on the CT grid."""

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


@dataclass
class HybridVolume:
    """The sources in geometry order, the SPECT on the segmentation grid and the segmentation.

    The grid is the CT's where there is a CT series, else the NM volume's (SPECT-only)."""

    ct: list[Dataset]
    """CT datasets, slice 0 the most inferior; empty for a SPECT-only acquisition."""
    hu: np.ndarray | None
    geometry: VolumeGeometry
    spect: np.ndarray | None
    labels: np.ndarray
    probabilities: np.ndarray
    lesions: list[HybridLesion]
    nm: Dataset | None

    @property
    def reference(self) -> Dataset:
        """The source whose patient, study and series the results describe: the first CT slice, or
        the NM volume of a SPECT-only acquisition."""
        return self.ct[0] if self.ct else self.nm  # type: ignore[return-value]

    @property
    def modality_name(self) -> str:
        return "SPECT/CT" if self.ct else "SPECT"


def find_lesions(probabilities: np.ndarray, hu: np.ndarray | None, spect: np.ndarray | None,
                 geometry: VolumeGeometry) -> tuple[np.ndarray, list[HybridLesion]]:
    """The label map (argmax) and its lesions (module docstring)."""
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    lesions = []
    for number, region in enumerate(ndimage.find_objects(components), start=1):
        mask = components[region] == number
        classes = labels[region][mask]
        label = METASTATIC if np.count_nonzero(classes == METASTATIC) >= np.count_nonzero(classes == BENIGN) else BENIGN
        centroid = np.argwhere(mask).mean(axis=0) + [s.start for s in region]
        lesions.append(HybridLesion(
            number=number, label=label, voxels=int(mask.sum()),
            volume_ml=float(mask.sum()) * geometry.voxel_volume_ml,
            probability=float(probabilities[label][region][mask].mean()),
            spect_mean=None if spect is None else float(spect[region][mask].mean()),
            spect_max=None if spect is None else float(spect[region][mask].max()),
            ct_mean_hu=None if hu is None else float(hu[region][mask].mean()),
            centroid=tuple(float(v) for v in centroid),
        ))
    return labels, lesions


def hybrid_volume(ct_datasets: Sequence[Dataset], nm_recon_dataset: Dataset | None,
                  probabilities: np.ndarray) -> HybridVolume:
    """Read the sources' geometry, put the SPECT on the segmentation grid and find the lesions."""
    hu: np.ndarray | None = None
    spect: np.ndarray | None = None
    if ct_datasets:
        hu, geometry, order = ct_volume(ct_datasets)
        ct = [ct_datasets[i] for i in order]
    elif nm_recon_dataset is not None:
        spect, geometry = nm_volume(nm_recon_dataset)
        ct = []
    else:
        raise ValueError("SPECT/CT results need a CT series or an NM RECON TOMO volume")
    expected = (len(CLASSES), *geometry.shape)
    if probabilities.shape != expected:
        raise ValueError(f"probabilities {probabilities.shape} do not match the segmentation grid {expected}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must be finite values in [0, 1]")
    if ct and nm_recon_dataset is not None:
        counts, spect_geometry = nm_volume(nm_recon_dataset)
        spect = resample(counts, spect_geometry, geometry)
    labels, lesions = find_lesions(probabilities, hu, spect, geometry)
    return HybridVolume(ct, hu, geometry, spect, labels, probabilities, lesions, nm_recon_dataset)


def build_hybrid_results(ct_datasets: Sequence[Dataset], nm_recon_dataset: Dataset | None,
                         probabilities: np.ndarray, *, algorithm: Algorithm,
                         options: ResultOptions | None = None, study_version: int = 1,
                         created: datetime | None = None, notes: Sequence[str] = ()) -> list[tuple[ResultKind, Dataset]]:
    """SEG, SR and SC (those of ``options.kinds``; GSPS has no SPECT/CT form) of one SPECT/CT or SPECT-only result,
    each with its kind, as :func:`dicomnode.pipeline.results.build_results` returns them. ``notes`` (a
    later reconstruction superseding an earlier one, a model not validated on real scans) are written
    into the SR's comments."""
    from dicomnode.pipeline.results.hybrid_sc import build_hybrid_picture
    from dicomnode.pipeline.results.hybrid_seg import build_hybrid_segmentation
    from dicomnode.pipeline.results.hybrid_sr import build_hybrid_report

    options = options or ResultOptions()
    volume = hybrid_volume(ct_datasets, nm_recon_dataset, probabilities)
    sources = [ds.SOPInstanceUID for ds in volume.ct] + ([nm_recon_dataset.SOPInstanceUID] if nm_recon_dataset else [])
    provenance = Provenance(
        options=options,
        result=HybridRun(_Study(str(volume.reference.StudyInstanceUID)), algorithm,  # type: ignore[arg-type]
                         notes=tuple(notes)),
        study_version=study_version,
        created=created or datetime.now(),
        source_uids=tuple(sources),
    )
    out: list[tuple[ResultKind, Dataset]] = []
    seg = build_hybrid_segmentation(volume, provenance)
    if ResultKind.SEG in options.kinds:
        out.append((ResultKind.SEG, seg))
    if ResultKind.SR in options.kinds:
        if ResultKind.SEG in options.kinds:
            out.append((ResultKind.SR, build_hybrid_report(volume, provenance, seg)))
        else:  # TID 1411 needs a region; the lesions' region is their SEG segment
            logger.warning("SPECT/CT SR left out: it refers to the SEG, which the configuration switches off")
    if ResultKind.SC in options.kinds:
        out.append((ResultKind.SC, build_hybrid_picture(volume, provenance)))
    logger.info("%s results: %d lesion(s) (%d metastatic, %d benign), %d object(s)",
                volume.modality_name, len(volume.lesions), sum(les.label == METASTATIC for les in volume.lesions),
                sum(les.label == BENIGN for les in volume.lesions), len(out))
    return out
