"""The processing of one study: views → segmentation → DICOM result objects.

Step "worker" of docs/architecture.md, "The journey of a study", without the queue: the worker
(:mod:`dicomnode.pipeline.worker`) runs it for each job, ``dicomnode segment``
(:mod:`dicomnode.tools.offline`) on files.

The segmenter is loaded once per process (:func:`load_segmenter`, config ``[model]``): ``weights`` is
``"default"`` (the shipped model), ``"threshold"`` (the network-free baseline) or a path to a
``.safetensors`` file or model card; ``device`` is resolved by :func:`segmentation.device.resolve_device`
(``"auto"``: CUDA when present, else the CPU; a CUDA device without a GPU is an error).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage

from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.results import ResultOptions, build_results
from segmentation.device import resolve_device
from segmentation.inference import WEIGHTS_DIR, Segmenter
from segmentation.result import SegmentationResult
from segmentation.views import ViewError, load_scan

log = logging.getLogger(__name__)


class UnreadableStudy(ValueError):
    """The study's input cannot be segmented as it stands (a permanent failure: not retried)."""


def load_segmenter(weights: str, device: str = "auto", threshold: float | None = None) -> Segmenter:
    """The segmenter named by config ``[model]`` (see the module docstring).

    ``threshold`` replaces the model card's probability threshold when given. Raises
    :class:`segmentation.device.DeviceError` for a device this machine lacks.
    """
    resolved = resolve_device(device)
    if weights == "default":
        segmenter = Segmenter.default(device=resolved)
    elif weights == "threshold":
        segmenter = Segmenter.from_weights(WEIGHTS_DIR / "threshold.json", device=resolved)
    else:
        segmenter = Segmenter.from_weights(Path(weights), device=resolved)
    if threshold is not None and threshold != segmenter.card.threshold:
        segmenter.card = dataclasses.replace(segmenter.card, threshold=threshold)
    log.info("segmenter %s %s (%s) on %s, threshold %.2f", segmenter.algorithm.name,
             segmenter.algorithm.version, segmenter.algorithm.network, resolved, segmenter.card.threshold)
    return segmenter


def segment_study(datasets: Sequence[Dataset], segmenter: Segmenter, options: ResultOptions,
                  study_version: int = 1) -> tuple[SegmentationResult, list[tuple[ResultKind, Dataset]]]:
    """The pipeline of one study, shared by the worker and ``dicomnode segment``.

    Raises :class:`UnreadableStudy` for input that cannot be turned into views.
    """
    nm = [ds for ds in datasets if ds.get("SOPClassUID") == NuclearMedicineImageStorage]
    if not nm:
        raise UnreadableStudy("the study has no NM Image Storage instance to segment")
    try:
        scan = load_scan(nm)
    except ViewError as exc:
        raise UnreadableStudy(f"views cannot be read: {exc}") from exc
    result = segmenter.segment(scan)
    return result, build_results(result, nm, options, study_version=study_version)


def encode(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (PS3.10 §7: preamble, meta information, data set)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
