"""A labelled study: the unit every training, validation and evaluation step works on.

Every label is a uint8 0/1 mask in the **stored layout** of the source frame, exactly what a SEG
references (docs/training.md); the folder readers that make these are :mod:`dicomnode.train.datasets` and
:mod:`dicomnode.train.bs80k`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dicomnode.segmentation.scan import BoneScan, View

from .weak import Box


@dataclass(frozen=True)
class TruthLesion:
    """One simulated lesion as the manifest describes it (for the breakdown by site and size)."""

    view: View
    site: str  # skeletal site ("bone" in the synth manifest), e.g. "ribs", "thoracic_spine"
    size_mm: float
    position: tuple[float, float]  # (row, column) in the *canonical* orientation, model-free pixels


@dataclass(frozen=True)
class LabelledStudy:
    """A bone scan and its lesion labels per view (stored layout); no label = unlabelled view."""

    key: str  # short name for logs and reports: folder name or Study Instance UID, never a patient name
    patient_id: str
    scan: BoneScan
    labels: Mapping[View, np.ndarray] = field(default_factory=dict)
    label_source: str = "none"  # "synth", "SEG", "LabelMe", "BS-80K boxes" or "none"
    lesions: tuple[TruthLesion, ...] = ()
    # weak supervision (:mod:`dicomnode.train.weak`): per labelled view, a stored-layout map of pixels the loss
    # ignores or weighs as hard negatives, and the annotated boxes the BS-80K evaluation scores against
    regions: Mapping[View, np.ndarray] = field(default_factory=dict)
    boxes: Mapping[View, tuple[Box, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, maps in (("label", self.labels), ("region map", self.regions)):
            for view, mask in maps.items():
                image = self.scan.views.get(view)
                if image is None:
                    raise ValueError(f"{self.key}: {kind} for a {view.value} view the study does not have")
                expected = (image.source.rows, image.source.columns)
                if mask.shape != expected or mask.dtype != np.uint8:
                    raise ValueError(
                        f"{self.key}: {view.value} {kind} is {mask.dtype} {mask.shape}, "
                        f"expected uint8 {expected} (the stored source frame)"
                    )
        if set(self.regions) - set(self.labels):
            raise ValueError(f"{self.key}: a region map for a view without a label")

    @property
    def labelled(self) -> bool:
        return bool(self.labels)
