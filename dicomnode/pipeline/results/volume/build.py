"""Result objects of a bone SPECT/CT segmentation (paper 003): the one entry the worker calls.

:func:`build_volume_results` takes the CT series (empty for a SPECT-only acquisition), the NM RECON
TOMO volume (or ``None``), and the class probabilities ``(3, slices, rows, columns)`` (background,
metastatic, benign) on the CT grid (slice 0 the most inferior, the order of
:func:`dicomnode.segmentation.volume.ct_geometry`) or, without a CT, on the NM volume's grid (the order of
:func:`dicomnode.segmentation.volume.nm_geometry`), and returns:

- a DICOM SEG on the CT series, or on the NM volume without one, with two segments, "Bone metastasis"
  and "Benign bone lesion" (:mod:`.seg`);
- a TID 1500 SR with one volumetric group per lesion (volume, SPECT mean/max counts, CT mean HU where
  there is a CT, class, probability) and study-level counts per class (:mod:`.sr`);
- a Secondary Capture with fused (or, without a CT, SPECT-only) axial and coronal slices and the
  lesions' contours (:mod:`.sc`).

Lesions are those of :mod:`dicomnode.segmentation.volume_lesions`, on the pixel data the segmenter decoded
(``volumes``: :mod:`.inputs`). The objects share the planar results' provenance
(:class:`~dicomnode.pipeline.results.common.Provenance`: UIDs derived from the study, the sources,
the version and the algorithm; series numbers by kind). ``classes`` are the model card's; the SEG's
segments are defined for paper 003's (:data:`dicomnode.segmentation.volume_lesions.LESION_CLASSES`).

The SR refers to the SEG's segments, so it is written only together with the SEG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.results.common import Provenance, ResultOptions
from dicomnode.pipeline.results.volume.sc import build_hybrid_picture
from dicomnode.pipeline.results.volume.seg import build_hybrid_segmentation
from dicomnode.pipeline.results.volume.sr import build_hybrid_report
from dicomnode.pipeline.results.volume.inputs import segmented_volume
from dicomnode.segmentation.result import Algorithm
from dicomnode.segmentation.volume import DecodedVolumes
from dicomnode.segmentation.volume_lesions import BENIGN, LESION_CLASSES, METASTATIC

logger = logging.getLogger(__name__)


def build_volume_results(ct_datasets: Sequence[Dataset], nm_recon_dataset: Dataset | None,
                         probabilities: np.ndarray, *, algorithm: Algorithm,
                         classes: Sequence[str] = LESION_CLASSES,
                         options: ResultOptions | None = None, study_version: int = 1,
                         created: datetime | None = None, notes: Sequence[str] = (),
                         volumes: DecodedVolumes | None = None) -> list[tuple[ResultKind, Dataset]]:
    """SEG, SR and SC (those of ``options.kinds``; GSPS has no SPECT/CT form) of one SPECT/CT or SPECT-only result,
    each with its kind, as :func:`dicomnode.pipeline.results.build_results` returns them. ``notes`` (a
    later reconstruction superseding an earlier one, a model not validated on real scans) are written
    into the SR's comments; ``volumes`` are the sources' pixel data as the segmenter decoded them."""
    options = options or ResultOptions()
    volume = segmented_volume(ct_datasets, nm_recon_dataset, probabilities, classes, volumes)
    sources = [ds.SOPInstanceUID for ds in volume.ct] + ([nm_recon_dataset.SOPInstanceUID] if nm_recon_dataset else [])
    provenance = Provenance(
        options=options,
        study_instance_uid=str(volume.reference.StudyInstanceUID),
        algorithm=algorithm,
        threshold=0.5,  # the most probable class wins: with three classes, never below 1/3
        study_version=study_version,
        created=created or datetime.now(),
        source_uids=tuple(sources),
        notes=tuple(notes),
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
