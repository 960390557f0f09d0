"""What a segmenter returns: per-view lesion maps in the source's own pixels, and the lesions.

Everything per-pixel here is in the *stored* layout of the source frame (the frame a SEG references),
not the canonical orientation; lesion coordinates are (row, column) in that same stored frame. The
threshold 0.5 on the probability map is the papers' (paper 001 §2.5, paper 002 §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicomnode.segmentation.anatomy import ViewAnatomy
from dicomnode.segmentation.scan import BoneScan, View


@dataclass(frozen=True)
class Algorithm:
    """Identification of the algorithm that produced a result (PS3.3 C.8.20.2 Algorithm Identification)."""

    name: str  # e.g. "dicomnode-unet"
    version: str  # weights version from the model card
    network: str  # registry name: unet, msanet, mams, semisup, threshold


@dataclass(frozen=True)
class Reading:
    """Which anatomy reading judged the lesion model's hot spots (docs/segmentation.md, "Anatomy map and
    second stage"), so that a result names every part that decided what it reports, not only the
    lesion model: the map's card and the second stage, or ``second_stage=None`` where the fixed rules
    alone judged (the stage is off, or it was fitted for another lesion model)."""

    anatomy_map: str  # the map's card: "<name> <version>"
    second_stage: str | None  # the stage's file as "sha256:<12 hex digits>"; None: the fixed rules alone

    def parameters(self) -> dict[str, str]:
        """Algorithm Parameters entries (PS3.3 C.8.20.2, TID 4019), beside the lesion model's own."""
        return {"anatomy_map": self.anatomy_map, "second_stage": self.second_stage or "off"}

    def describe(self) -> str:
        """How the hot spots were read, for a report: "read on the anatomy map …, judged by …"."""
        judged = (f"the fixed rules and the learned second stage {self.second_stage}" if self.second_stage
                  else "the fixed rules alone")
        return f"read on the anatomy map {self.anatomy_map}, judged by {judged}"


@dataclass(frozen=True)
class Lesion:
    """One connected component of a view's binary mask (8-connectivity)."""

    view: View
    label: int  # 1-based label within its view
    pixel_count: int
    area_mm2: float
    centroid: tuple[float, float]  # (row, column) in the stored source frame
    bbox: tuple[int, int, int, int]  # (row_min, col_min, row_max, col_max), max exclusive, stored frame
    peak_counts: float
    mean_counts: float
    site: str | None = None  # skeletal site where known (e.g. "thoracic spine", "left ribs")
    probability: float | None = None  # how likely a bone lesion, where the anatomy reading judged it (calibrated where the card is)


@dataclass(frozen=True)
class Dismissal:
    """A hot spot the lesion model marked and the anatomy reading judged not a bone lesion
    (:mod:`dicomnode.segmentation.judgement`): urine, extra-osseous uptake, physiological uptake."""

    lesion: Lesion  # as the lesion model found it, its site from the anatomy map
    reason: str


@dataclass(frozen=True)
class ViewResult:
    """The segmentation of one view, in that view's stored source frame."""

    view: View
    probability: np.ndarray  # float32 in [0, 1], shape (rows, columns) of the source frame
    mask: np.ndarray  # uint8 0/1, same shape
    lesions: tuple[Lesion, ...]

    def __post_init__(self) -> None:
        if self.probability.shape != self.mask.shape:
            raise ValueError("probability and mask shapes differ")
        if self.mask.dtype != np.uint8:
            raise ValueError("mask must be uint8")


@dataclass(frozen=True)
class SegmentationResult:
    """The result for one study: a :class:`ViewResult` per view present in the scan."""

    scan: BoneScan
    views: dict[View, ViewResult]
    algorithm: Algorithm
    threshold: float = 0.5
    notes: tuple[str, ...] = field(default_factory=tuple)
    anatomy: dict[View, ViewAnatomy] = field(default_factory=dict)  # the map per view, where run
    dismissed: tuple[Dismissal, ...] = ()  # hot spots judged not bone lesions (not in the masks)
    reading: Reading | None = None  # the anatomy reading that judged the lesions; None: the lesion model alone

    @property
    def lesions(self) -> list[Lesion]:
        """All lesions, anterior first."""
        return [lesion for result in self.views.values() for lesion in result.lesions]

    @property
    def missing(self) -> list[View]:
        """Views the study lacked (the results say so)."""
        return self.scan.missing
