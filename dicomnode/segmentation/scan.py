"""A whole-body bone scan as the segmentation package sees it: two planar views and their geometry.

Canonical orientation (used for every array in a :class:`ViewImage`): row 0 is cranial (head) and
rows run towards the feet; column 0 is the patient's right and columns run towards the patient's
left. That is the anterior view as a camera stores it (Patient Orientation ``L\\F``, DICOM PS3.3
C.7.6.1.1.1) and the posterior view *un-mirrored*: a posterior view is stored as seen from behind
(Patient Orientation ``R\\F``), so it is flipped left-right to bring the same bone to the same column
as in the anterior view (paper 004 §2.3, "posterior image mirrored then added").

A :class:`ViewImage` keeps the source's own matrix and spacing; resampling to the model's spacing is
the job of :mod:`dicomnode.segmentation.preprocess`. :meth:`ViewSource.to_stored` and
:meth:`ViewSource.to_canonical` move any per-pixel array between the canonical orientation and the
stored layout of the DICOM frame, exactly (flips only), so a mask computed in canonical space lands
pixel-exactly on the source frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class ViewError(ValueError):
    """A DICOM input that cannot be turned into bone-scan views; the message names the attribute."""


class NotWholeBodyView(ViewError):
    """A frame whose detector looks obliquely or laterally (a static LAO/RPO pair, a lateral skull):
    not an anterior or posterior whole-body projection, so not a bone-scan view."""


class View(str, Enum):
    """Planar projection of a whole-body bone scan (CID 26 "Nuclear Medicine Projection")."""

    ANTERIOR = "anterior"
    POSTERIOR = "posterior"


class ViewRule(str, Enum):
    """Which rule identified a view, in the order of docs/dicom.md (first match wins)."""

    VIEW_CODE = "view-code"  # Detector Information Sequence > View Code Sequence (SCT or SRT code)
    DETECTOR_ORIENTATION = "detector-orientation"  # the detector item's Image Orientation (Patient)
    VENDOR_CODE = "vendor-code"  # a private-scheme View Code (e.g. Siemens 99NMG "RT ANT")
    ROOT_VIEW_CODE = "root-view-code"  # a View Code Sequence at the dataset root (non-standard)
    PATIENT_ORIENTATION = "patient-orientation"  # (0020,0020) L\F anterior, R\F posterior
    DESCRIPTION = "description"  # ANT / POST in Image ID, Series or Image Description
    ASSUMED = "assumed"  # nothing said: frame/instance order (anterior first); always logged


@dataclass(frozen=True)
class ViewSource:
    """Where one view came from and how its stored pixels map to the canonical orientation.

    ``frame_number`` is 1-based as in DICOM (Referenced Frame Number, PS3.3 C.7.6.16.2.5).
    ``flip_lr`` / ``flip_ud`` say which flips turn the stored frame into the canonical orientation
    (each flip is its own inverse, so the same flips map canonical arrays back).
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    frame_number: int
    rows: int
    columns: int
    flip_lr: bool
    flip_ud: bool
    rule: ViewRule

    def to_canonical(self, stored: np.ndarray) -> np.ndarray:
        """Map a per-pixel array from the stored frame layout to the canonical orientation."""
        return self._flip(stored)

    def to_stored(self, canonical: np.ndarray) -> np.ndarray:
        """Map a per-pixel array from the canonical orientation back to the stored frame layout."""
        return self._flip(canonical)

    def _flip(self, array: np.ndarray) -> np.ndarray:
        if array.shape[-2:] != (self.rows, self.columns):
            raise ValueError(
                f"array of shape {array.shape} does not match the source frame "
                f"({self.rows} rows x {self.columns} columns)"
            )
        if self.flip_lr:
            array = array[..., :, ::-1]
        if self.flip_ud:
            array = array[..., ::-1, :]
        return np.ascontiguousarray(array)


@dataclass(frozen=True)
class ViewImage:
    """One planar view: float32 counts in canonical orientation at the source's pixel spacing."""

    view: View
    counts: np.ndarray
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm, PS3.3 10.7.1.3
    source: ViewSource

    def __post_init__(self) -> None:
        if self.counts.ndim != 2 or self.counts.dtype != np.float32:
            raise ValueError("counts must be a 2-D float32 array")
        if self.counts.shape != (self.source.rows, self.source.columns):
            raise ValueError("counts shape does not match the source frame")
        if min(self.pixel_spacing) <= 0:
            raise ValueError(f"pixel spacing must be positive, got {self.pixel_spacing}")

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.pixel_spacing[0] * self.pixel_spacing[1])


@dataclass(frozen=True)
class BoneScan:
    """A study's anterior and posterior views; either may be missing (the result says which)."""

    study_instance_uid: str
    anterior: ViewImage | None = None
    posterior: ViewImage | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # how views were decided, what was odd

    def __post_init__(self) -> None:
        if self.anterior is None and self.posterior is None:
            raise ValueError("a bone scan needs at least one view")
        for expected, image in ((View.ANTERIOR, self.anterior), (View.POSTERIOR, self.posterior)):
            if image is not None and image.view is not expected:
                raise ValueError(f"{expected.value} slot holds a {image.view.value} view")

    @property
    def views(self) -> dict[View, ViewImage]:
        """The views present, anterior first."""
        return {
            image.view: image for image in (self.anterior, self.posterior) if image is not None
        }

    @property
    def missing(self) -> list[View]:
        """The views this study lacks."""
        return [view for view in View if view not in self.views]
