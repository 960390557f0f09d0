"""A bone SPECT/CT (or SPECT-only) segmentation with its sources, as the result objects read it.

:func:`segmented_volume` puts together the CT series in slice order (empty for a SPECT-only
acquisition), the SPECT counts on the segmentation grid, the class probabilities and their lesions
(:func:`dicomnode.segmentation.volume_lesions.find_lesions`), from the pixel data the segmenter decoded
(:class:`dicomnode.segmentation.volume.DecodedVolumes`), so that a job decodes each source once. The SEG,
SR and SC builders (:mod:`.seg`, :mod:`.sr`, :mod:`.sc`) read a
:class:`SegmentedVolume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.pipeline.results.common import ResultInputError
from dicomnode.segmentation.volume import DecodedVolumes, VolumeGeometry, decode_volumes
from dicomnode.segmentation.volume_lesions import BENIGN, LESION_CLASSES, METASTATIC, VolumeLesion, find_lesions

SEGMENT_OF_CLASS = {METASTATIC: 1, BENIGN: 2}
"""SEG segment number of each lesion class."""


@dataclass
class SegmentedVolume:
    """The sources in geometry order, the SPECT on the segmentation grid and the segmentation.

    The grid is the CT's where there is a CT series, else the NM volume's (SPECT-only)."""

    ct: list[Dataset]
    """CT datasets, slice 0 the most inferior; empty for a SPECT-only acquisition."""
    hu: np.ndarray | None
    geometry: VolumeGeometry
    spect: np.ndarray | None
    labels: np.ndarray
    probabilities: np.ndarray
    lesions: list[VolumeLesion]
    nm: Dataset | None

    @property
    def reference(self) -> Dataset:
        """The source whose patient, study and series the results describe: the first CT slice, or
        the NM volume of a SPECT-only acquisition."""
        return self.ct[0] if self.ct else self.nm  # type: ignore[return-value]

    @property
    def modality_name(self) -> str:
        return "SPECT/CT" if self.ct else "SPECT"


def segmented_volume(ct_datasets: Sequence[Dataset], nm_recon_dataset: Dataset | None,
                  probabilities: np.ndarray, classes: Sequence[str] = LESION_CLASSES,
                  volumes: DecodedVolumes | None = None) -> SegmentedVolume:
    """The sources in geometry order, the SPECT on the segmentation grid and the lesions. The pixel
    data are those the segmenter decoded (``volumes``), decoded here only when not given. ``classes``
    (the model card's) must be those the results encode; :class:`ResultInputError` otherwise."""
    if tuple(classes) != LESION_CLASSES:
        raise ResultInputError(f"the model's classes {tuple(classes)} are not {LESION_CLASSES}, the classes "
                               "these results encode")
    if not ct_datasets and nm_recon_dataset is None:
        raise ResultInputError("SPECT/CT results need a CT series or an NM RECON TOMO volume")
    volumes = volumes or decode_volumes(ct_datasets, nm_recon_dataset)
    hu, geometry = volumes.hu, volumes.grid
    ct = [ct_datasets[i] for i in volumes.ct_order]
    expected = (len(LESION_CLASSES), *geometry.shape)
    if probabilities.shape != expected:
        raise ResultInputError(f"probabilities {probabilities.shape} do not match the segmentation grid {expected}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ResultInputError("probabilities must be finite values in [0, 1]")
    spect = volumes.spect_on_grid
    labels, lesions = find_lesions(probabilities, hu, spect, geometry)
    return SegmentedVolume(ct, hu, geometry, spect, labels, probabilities, lesions, nm_recon_dataset)
