"""Lesions of a volume segmentation (paper 003's classes): the model's post-processing on arrays.

The lesions are the 26-connected components of the voxels whose most probable class is a lesion
class (argmax of the class probabilities); a component's class is the lesion class most of its voxels
take, its probability the mean probability of that class over its voxels; the SPECT counts and CT
numbers inside it are measured where those volumes are given (docs/segmentation.md, "SPECT/CT").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomnode.segmentation.volume import VolumeGeometry

#: Paper 003's classes, in the order of a ``spectct-classes`` card's ``classes`` that these lesions read.
LESION_CLASSES = ("background", "metastatic", "benign")
METASTATIC, BENIGN = LESION_CLASSES.index("metastatic"), LESION_CLASSES.index("benign")


@dataclass(frozen=True)
class VolumeLesion:
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
        return LESION_CLASSES[self.label]


def find_lesions(probabilities: np.ndarray, hu: np.ndarray | None, spect: np.ndarray | None,
                 geometry: VolumeGeometry) -> tuple[np.ndarray, list[VolumeLesion]]:
    """The label map (argmax) and its lesions (module docstring)."""
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    lesions = []
    for number, region in enumerate(ndimage.find_objects(components), start=1):
        mask = components[region] == number
        classes = labels[region][mask]
        label = METASTATIC if np.count_nonzero(classes == METASTATIC) >= np.count_nonzero(classes == BENIGN) else BENIGN
        centroid = np.argwhere(mask).mean(axis=0) + [s.start for s in region]
        lesions.append(VolumeLesion(
            number=number, label=label, voxels=int(mask.sum()),
            volume_ml=float(mask.sum()) * geometry.voxel_volume_ml,
            probability=float(probabilities[label][region][mask].mean()),
            spect_mean=None if spect is None else float(spect[region][mask].mean()),
            spect_max=None if spect is None else float(spect[region][mask].max()),
            ct_mean_hu=None if hu is None else float(hu[region][mask].mean()),
            centroid=tuple(float(v) for v in centroid),
        ))
    return labels, lesions
