"""The result objects of a planar whole-body acquisition: SEG, GSPS, TID 1500 SR, Secondary Capture.

:func:`build_results` is the family's one entry point (:data:`dicomnode.pipeline.kinds.KINDS`). It
pairs each view of a :class:`~dicomnode.segmentation.result.SegmentationResult` with its NM source dataset,
then asks one module per object for its objects, in the order of ``options.kinds``:

- :mod:`.seg`  DICOM SEG, one BINARY segment "Bone metastasis", one instance per view;
- :mod:`.gsps` Grayscale Softcopy Presentation State with a contour per lesion and a summary;
- :mod:`.sr`   Comprehensive SR, TID 1500, per-lesion planar ROIs and the study's burden;
- :mod:`.sc`   Secondary Capture picture of both views with contours and a legend.

Series numbering and UIDs are explained in :mod:`dicomnode.pipeline.results.common`; the approximate
Bone Scan Index in :mod:`.burden`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from pydicom.dataset import Dataset

from dicomnode.pipeline.results.planar.burden import assess_burden
from dicomnode.pipeline.results.common import Provenance, ResultKind, ResultOptions, match_sources
from dicomnode.pipeline.results.planar.gsps import build_presentation_state
from dicomnode.pipeline.results.planar.sc import build_picture
from dicomnode.pipeline.results.planar.seg import build_segmentations
from dicomnode.pipeline.results.planar.sr import build_report
from dicomnode.segmentation.result import SegmentationResult

logger = logging.getLogger(__name__)

def build_results(
    result: SegmentationResult,
    sources: Sequence[Dataset],
    options: ResultOptions = ResultOptions(),
    *,
    study_version: int = 1,
) -> list[tuple[ResultKind, Dataset]]:
    """The DICOM result objects of ``result``, each ready for ``save_as(enforce_file_format=True)``.

    ``sources`` are the NM datasets the scan came from (matched by SOP Instance UID). A
    ``study_version`` above 1 means the study changed and was processed again: its objects get new
    series (and series numbers 10 higher per version). Raises ``ValueError`` for inputs that do not
    fit together.
    """
    if isinstance(study_version, bool) or not isinstance(study_version, int) or study_version < 1:
        raise ValueError(f"study_version must be an integer >= 1, got {study_version!r}")
    frames = match_sources(result, sources)
    provenance = Provenance(
        options=options,
        study_instance_uid=result.scan.study_instance_uid,
        algorithm=result.algorithm,
        threshold=result.threshold,
        study_version=study_version,
        created=datetime.now(),
        source_uids=tuple(sorted({frame.source.sop_instance_uid for frame in frames.values()})),
        notes=tuple(dict.fromkeys((*result.scan.notes, *result.notes))),  # the result's include the scan's: once
        reading=result.reading,
    )
    needs_burden = any(kind is not ResultKind.SEG for kind in options.kinds)
    burden = assess_burden(result) if needs_burden else None
    objects: list[tuple[ResultKind, Dataset]] = []
    for kind in options.kinds:
        match kind:
            case ResultKind.SEG:
                datasets = build_segmentations(frames, provenance)
            case ResultKind.GSPS:
                datasets = build_presentation_state(frames, provenance, burden)
            case ResultKind.SR:
                datasets = build_report(frames, provenance, burden)
            case ResultKind.SC:
                datasets = build_picture(frames, provenance, burden)
        objects.extend((kind, dataset) for dataset in datasets)
    logger.info(
        "study %s version %d: %s",
        result.scan.study_instance_uid, study_version, ", ".join(kind.value for kind, _ in objects),
    )
    return objects
