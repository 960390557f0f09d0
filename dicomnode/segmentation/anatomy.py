"""The anatomy of a planar whole-body view: what every pixel is, and where the body's midline runs.

A physician reads a bone scan anatomy first: the bladder, the kidneys and an injection site are not
bone, paired joints are compared with their other side, the face and teeth light up in most
patients. :class:`AnatomyLabel` is the vocabulary of that reading (the skeletal regions of issue 25
plus the bladder, the kidneys, other soft tissue and background); :class:`ViewAnatomy` is one view's
label map on its *stored* source frame (the frame a SEG references) with the midline, so a point can
be named, sided and mirrored onto its contralateral twin. The map comes from the anatomy network
(:mod:`dicomnode.segmentation.anatomymap`), trained on the simulator's exact labels
(``dicomnode.synth.labels``); docs/segmentation.md, "Anatomy map".

Labels are not sided: the side of a pixel is its position against the midline in the canonical
orientation (:mod:`dicomnode.segmentation.scan`: column 0 the patient's right), so one map serves both views.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from dicomnode.segmentation.regions import ANKLE, Region, SkeletalRegions
from dicomnode.segmentation.scan import ViewSource


class AnatomyLabel(IntEnum):
    """What a pixel of a whole-body view shows; the value is the label in the map."""

    BACKGROUND = 0
    SOFT_TISSUE = 1
    SKULL = 2  # calvarium and skull base
    FACIAL_BONES = 3  # facial bones, teeth and mandible
    CERVICAL_SPINE = 4
    THORACIC_SPINE = 5
    LUMBAR_SPINE = 6
    SACRUM = 7
    PELVIS = 8  # ilia, sacro-iliac joints, acetabula, pubis, ischia
    RIBS = 9
    STERNUM = 10
    SCAPULAE = 11
    CLAVICLES = 12
    HUMERI = 13
    FOREARMS_AND_HANDS = 14
    FEMORA = 15  # with the patellae
    LOWER_LEGS_AND_FEET = 16
    BLADDER = 17
    KIDNEYS = 18

    @property
    def site(self) -> str:
        """The name a reader uses, e.g. "thoracic spine", "forearms and hands"."""
        return self.name.lower().replace("_", " ")

    @property
    def is_bone(self) -> bool:
        return AnatomyLabel.SKULL <= self <= AnatomyLabel.LOWER_LEGS_AND_FEET

    @property
    def is_urinary(self) -> bool:
        """Urine: activity excreted, never a bone finding."""
        return self in (AnatomyLabel.BLADDER, AnatomyLabel.KIDNEYS)

    @property
    def paired(self) -> bool:
        """Regions with a left and a right twin (compared for symmetry)."""
        return self in PAIRED


PAIRED = frozenset({
    AnatomyLabel.PELVIS, AnatomyLabel.RIBS, AnatomyLabel.SCAPULAE, AnatomyLabel.CLAVICLES,
    AnatomyLabel.HUMERI, AnatomyLabel.FOREARMS_AND_HANDS, AnatomyLabel.FEMORA,
    AnatomyLabel.LOWER_LEGS_AND_FEET, AnatomyLabel.KIDNEYS, AnatomyLabel.SKULL,
    AnatomyLabel.FACIAL_BONES,
})
LABEL_COUNT = len(AnatomyLabel)


@dataclass(frozen=True)
class Midline:
    """The body's midline in canonical pixel coordinates: ``column = intercept + slope × row``."""

    intercept: float
    slope: float

    def column(self, row: float | np.ndarray) -> float | np.ndarray:
        return self.intercept + self.slope * np.asarray(row, dtype=float)

    def scaled(self, row_factor: float, column_factor: float) -> Midline:
        """The same line on a grid whose pixel centres are scaled (``new = (old + 0.5) × f − 0.5``)."""
        slope = self.slope * column_factor / row_factor
        intercept = (self.intercept + 0.5 - self.slope * 0.5) * column_factor - 0.5 + slope * 0.5
        return Midline(float(intercept), float(slope))


def fit_midline(labels: np.ndarray) -> Midline | None:
    """The midline: a line through each row's centre of the body (every non-background pixel; the
    body is left–right symmetric head to feet, the legs included), fitted by least squares, refitted
    without the rows more than 3 median deviations off (a raised arm, a cut field), weighted by each
    row's width. None when fewer than 8 rows hold a body."""
    body = labels != AnatomyLabel.BACKGROUND
    counts = body.sum(axis=1)
    rows = np.flatnonzero(counts)
    if rows.size < 8:
        return None
    columns = np.arange(labels.shape[1])
    centres = (body[rows] * columns).sum(axis=1) / counts[rows]
    weights = np.sqrt(counts[rows].astype(float))
    keep = np.ones(rows.size, bool)
    for _ in range(2):
        slope, intercept = np.polyfit(rows[keep].astype(float), centres[keep], 1, w=weights[keep])
        residual = np.abs(centres - (intercept + slope * rows))
        spread = max(float(np.median(residual[keep])), 0.5)
        keep = residual <= 3 * spread
    return Midline(float(intercept), float(slope))


@dataclass(frozen=True)
class ViewAnatomy:
    """One view's anatomy: labels on the stored source frame and the midline (canonical)."""

    labels: np.ndarray  # uint8 AnatomyLabel per pixel, stored layout of the source frame
    midline: Midline | None  # canonical source pixels; None when the axial skeleton was not found
    source: ViewSource

    def label_at(self, row: float, column: float) -> AnatomyLabel:
        """The label of the stored-frame pixel nearest to (row, column); background outside."""
        r, c = round(row), round(column)
        if not (0 <= r < self.labels.shape[0] and 0 <= c < self.labels.shape[1]):
            return AnatomyLabel.BACKGROUND
        return AnatomyLabel(int(self.labels[r, c]))

    def dominant(self, mask: np.ndarray) -> AnatomyLabel:
        """The most frequent non-background label under a stored-frame mask (background if none)."""
        values = self.labels[np.asarray(mask, dtype=bool)]
        values = values[values != AnatomyLabel.BACKGROUND]
        if values.size == 0:
            return AnatomyLabel.BACKGROUND
        return AnatomyLabel(int(np.bincount(values, minlength=LABEL_COUNT).argmax()))

    def region_of(self, mask: np.ndarray, bone_share: float = 0.2) -> AnatomyLabel:
        """The region of a hot spot under a stored-frame mask: its most frequent skeletal label when
        bone covers at least ``bone_share`` of it (a lesion's blurred footprint spills over a thin
        bone such as a rib), else its most frequent label."""
        values = self.labels[np.asarray(mask, dtype=bool)]
        counts = np.bincount(values, minlength=LABEL_COUNT)
        bone = counts[AnatomyLabel.SKULL:AnatomyLabel.LOWER_LEGS_AND_FEET + 1]
        if values.size and bone.sum() >= bone_share * values.size:
            return AnatomyLabel(int(bone.argmax()) + AnatomyLabel.SKULL)
        return self.dominant(mask)

    def _canonical_column(self, column: float) -> float:
        return self.source.columns - 1 - column if self.source.flip_lr else column

    def _canonical_row(self, row: float) -> float:
        return self.source.rows - 1 - row if self.source.flip_ud else row

    def side(self, row: float, column: float) -> str | None:
        """"right" or "left" (the patient's) of a stored-frame point; None without a midline."""
        if self.midline is None:
            return None
        canonical = self._canonical_column(column)
        return "right" if canonical < self.midline.column(self._canonical_row(row)) else "left"

    def mirror(self, row: float, column: float) -> tuple[float, float] | None:
        """The stored-frame point mirrored about the midline (its contralateral twin)."""
        if self.midline is None:
            return None
        canonical_row = self._canonical_row(row)
        mirrored = 2.0 * float(self.midline.column(canonical_row)) - self._canonical_column(column)
        return row, self._canonical_column(mirrored)  # the flip is its own inverse


#: Labels of the limbs' long bones, none of which lies on the body's midline (knees together stand about
#: 5 cm off it; the forearms and hands may lie folded over the abdomen and are not among them).
LONG_BONES = (AnatomyLabel.HUMERI, AnatomyLabel.FEMORA, AnatomyLabel.LOWER_LEGS_AND_FEET)
#: ... closer than this to the midline (mm), a pixel is not in one of them,
LONG_BONE_CLEARANCE_MM = 30.0
#: ... nor closer than this share of the body's width in its row: a child's knees held together stand
#: less than 5 cm off the midline (each knee's centre a quarter of the legs' width off it).
LONG_BONE_CLEARANCE_OF_WIDTH = 1 / 8


def anatomically_possible(labels: np.ndarray, midline: Midline | None, spacing_mm: float) -> np.ndarray:
    """A canonical label map without the labels anatomy forbids where the network put them: a long
    bone (:data:`LONG_BONES`) closer to the midline than :data:`LONG_BONE_CLEARANCE_MM`, or than
    :data:`LONG_BONE_CLEARANCE_OF_WIDTH` of the mapped body's width in its row if that is less, is
    soft tissue. On real scans the network names the bladder, the urine below it, the face or the spine
    of some patients a femur or a humerus (docs/segmentation.md, "Anatomy map and second stage");
    its next choice there is no better (the facial bones, for most of them in the pelvis), so the
    pixel is read as what the map can claim: tissue that is not a long bone. Without a midline,
    ``labels`` unchanged."""
    if midline is None:
        return labels
    rows, columns = np.indices(labels.shape)
    width_mm = (labels != AnatomyLabel.BACKGROUND).sum(axis=1, keepdims=True) * spacing_mm
    clearance = np.minimum(LONG_BONE_CLEARANCE_MM, LONG_BONE_CLEARANCE_OF_WIDTH * width_mm)
    near = np.abs(columns - midline.column(rows)) * spacing_mm < clearance
    out = labels.copy()
    out[near & np.isin(labels, LONG_BONES)] = AnatomyLabel.SOFT_TISSUE
    return out


def labels_to_source(labels: np.ndarray, source: ViewSource) -> np.ndarray:
    """A canonical model-grid label map → the stored source frame (nearest pixel centre)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(source.rows) + 0.5) * h / source.rows).astype(int), h - 1)
    cols = np.minimum(((np.arange(source.columns) + 0.5) * w / source.columns).astype(int), w - 1)
    return source.to_stored(np.ascontiguousarray(labels[np.ix_(rows, cols)]))


#: The coarse regions of :mod:`dicomnode.segmentation.regions` (and so Spiers' bone groups of the approximate
#: BSI) that each skeletal label of the map belongs to; the lower legs and feet split at the ankle.
_COARSE = {
    AnatomyLabel.SKULL: Region.SKULL, AnatomyLabel.FACIAL_BONES: Region.SKULL,
    AnatomyLabel.CERVICAL_SPINE: Region.CERVICAL_SPINE, AnatomyLabel.THORACIC_SPINE: Region.THORACIC_SPINE,
    AnatomyLabel.LUMBAR_SPINE: Region.LUMBAR_SPINE, AnatomyLabel.SACRUM: Region.SACRUM,
    AnatomyLabel.PELVIS: Region.PELVIS, AnatomyLabel.RIBS: Region.THORACIC_CAGE,
    AnatomyLabel.STERNUM: Region.THORACIC_CAGE, AnatomyLabel.SCAPULAE: Region.THORACIC_CAGE,
    AnatomyLabel.CLAVICLES: Region.THORACIC_CAGE, AnatomyLabel.HUMERI: Region.UPPER_LIMBS,
    AnatomyLabel.FOREARMS_AND_HANDS: Region.UPPER_LIMBS, AnatomyLabel.FEMORA: Region.FEMORA,
    AnatomyLabel.LOWER_LEGS_AND_FEET: Region.LOWER_LEGS,
}


def map_regions(anatomy: ViewAnatomy) -> SkeletalRegions:
    """The view's :class:`SkeletalRegions` from the map (canonical): each bone pixel its coarse region,
    every skeletal label pixel bone, the feet below the ankle (0.961 of the body height,
    :data:`dicomnode.segmentation.regions.ANKLE`). Raises ``ValueError`` when the map holds no body."""
    labels = anatomy.source.to_canonical(anatomy.labels)
    rows = np.flatnonzero((labels != AnatomyLabel.BACKGROUND).any(axis=1))
    if rows.size == 0:
        raise ValueError("the anatomy map holds no body")
    top, bottom = int(rows[0]), int(rows[-1])
    coarse = np.zeros(labels.shape, np.uint8)
    for label, region in _COARSE.items():
        coarse[labels == label] = region
    ankle = top + round(ANKLE * (bottom - top + 1))
    feet = coarse[ankle:] == Region.LOWER_LEGS
    coarse[ankle:][feet] = Region.FEET
    midline = anatomy.midline.column((top + bottom) / 2) if anatomy.midline else labels.shape[1] / 2
    return SkeletalRegions(labels=coarse, bone=coarse != 0, body_top=top, body_bottom=bottom,
                           midline=float(midline), truncated=top == 0 or bottom == labels.shape[0] - 1)
