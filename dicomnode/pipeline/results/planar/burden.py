"""Lesion sites and an approximate Bone Scan Index from a planar bone-scan result.

Bone Scan Index (Imbriaco et al., Clin Cancer Res 1998; docs/segmentation.md): the sum over
bones of (fraction of the bone involved by tumour) x (that bone's fraction of the skeletal mass),
with the skeletal-mass fractions of Spiers (*Radioisotopes in the Human Body*, 1968, p. 120, as
tabulated at medicalalgorithms.com "Bone Scan Index (BSI)"). On a planar view the bones cannot be
told apart one by one, so Spiers' bones are grouped into coarse regions (table
:data:`SPIERS_GROUPS`): those of the anatomy map where it ran (:func:`dicomnode.segmentation.anatomy.map_regions`:
its skeletal labels are the bone, each in its region), else those :mod:`dicomnode.segmentation.regions`
finds from the counts and body proportions. Spiers' numbers add up to 100.1 % and are normalised
to 100 %.

Per view and group: involved fraction = lesion pixels / (bone or lesion pixels) in the group's
regions. The anterior and posterior views show the same skeleton, so per group the larger of the
two views' fractions counts (a lesion is usually clearer in the view nearer to it), never their sum.
This is an approximation from planar counts without a skeletal segmentation: it is meant to follow
the burden over time for research, NOT FOR DIAGNOSTIC USE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dicomnode.segmentation.anatomy import map_regions
from dicomnode.segmentation.regions import Region, SkeletalRegions, skeletal_regions
from dicomnode.segmentation.result import Lesion, SegmentationResult
from dicomnode.segmentation.scan import View, ViewSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoneGroup:
    """Spiers' bones that one group of regions holds, and their share of the skeletal mass."""

    name: str
    spiers_percent: float
    bones: str
    regions: tuple[Region, ...]


SPIERS_GROUPS: tuple[BoneGroup, ...] = (
    BoneGroup("skull", 18.4, "skull 16.6, mandible 1.8", (Region.SKULL,)),
    BoneGroup(
        "spine and sacrum", 8.3, "spine and sacrum 8.3",
        (Region.CERVICAL_SPINE, Region.THORACIC_SPINE, Region.LUMBAR_SPINE, Region.SACRUM),
    ),
    BoneGroup(
        "thoracic cage", 8.7, "ribs 4.4, sternum 0.3, scapulae 2 x 1.5, clavicles 2 x 0.5",
        (Region.THORACIC_CAGE,),
    ),
    BoneGroup("pelvis", 7.5, "pelvis 7.5", (Region.PELVIS,)),
    BoneGroup(
        "upper limbs", 15.0, "humeri 2 x 3.3, ulnae 2 x 1.5, radii 2 x 1.2, hands 2 x 1.5",
        (Region.UPPER_LIMBS,),
    ),
    BoneGroup("femora", 17.8, "femora 2 x 8.9", (Region.FEMORA,)),
    BoneGroup("lower legs", 12.8, "tibiae 2 x 5.1, fibulae 2 x 1.3", (Region.LOWER_LEGS,)),
    BoneGroup("feet", 11.6, "feet 2 x 5.8", (Region.FEET,)),
)
_TOTAL_PERCENT = sum(group.spiers_percent for group in SPIERS_GROUPS)  # 100.1, Spiers' rounding

#: Said wherever the index is shown (SR text, SC legend, GSPS summary).
BSI_EXPLANATION = (
    "Approximate Bone Scan Index: sum over skeletal regions of the lesion area divided by the "
    "region's bone area (regions and bone from the anatomy map where it ran, else from planar "
    "counts and body proportions) times Spiers' bone-mass weight of the region (1968; normalised to 100 %); per "
    "region the larger of the anterior and posterior fractions. Not the validated BSI; "
    "NOT FOR DIAGNOSTIC USE."
)


@dataclass(frozen=True)
class SitedLesion:
    """A lesion and the skeletal site it lies in (None where its centroid is outside the body)."""

    lesion: Lesion
    site: str | None


@dataclass(frozen=True)
class ViewBurden:
    """One view: its lesions with sites and the involved fraction of each bone group."""

    view: View
    lesions: tuple[SitedLesion, ...]
    involvement: dict[str, float]  # BoneGroup.name -> fraction in [0, 1]; empty if regions failed
    regions: SkeletalRegions | None

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    @property
    def total_area_mm2(self) -> float:
        return float(sum(item.lesion.area_mm2 for item in self.lesions))


@dataclass(frozen=True)
class BoneBurden:
    """The study: per-view burden, the approximate BSI (percent) and what limits it."""

    views: dict[View, ViewBurden]
    bsi_percent: float | None  # None when no view could be cut into regions
    involvement: dict[str, float]  # per group, the larger of the views' fractions
    notes: tuple[str, ...]
    anatomy_mapped: bool = False  # regions from the anatomy map, not planar counts

    @property
    def lesion_count(self) -> int:
        return sum(view.lesion_count for view in self.views.values())

    @property
    def total_area_mm2(self) -> float:
        return float(sum(view.total_area_mm2 for view in self.views.values()))


def assess_burden(result: SegmentationResult) -> BoneBurden:
    """Sites of every lesion and the approximate BSI of ``result`` (module docstring)."""
    notes: list[str] = []
    views: dict[View, ViewBurden] = {}
    for view, image in result.scan.views.items():
        view_result = result.views[view]
        try:
            regions: SkeletalRegions | None = (
                map_regions(result.anatomy[view]) if view in result.anatomy
                else skeletal_regions(image.counts, image.pixel_spacing))
        except ValueError as error:
            regions = None
            notes.append(f"{view.value} view: skeletal regions not found ({error})")
            logger.warning("%s view: skeletal regions not found: %s", view.value, error)
        if regions is not None and regions.truncated:
            notes.append(
                f"{view.value} view: the body reaches the edge of the field; regions may be misplaced"
            )
        lesions = tuple(
            SitedLesion(lesion, lesion.site or _site(lesion, image.source, regions))
            for lesion in view_result.lesions
        )
        involvement = (
            {} if regions is None else _involvement(image.source.to_canonical(view_result.mask), regions)
        )
        views[view] = ViewBurden(view=view, lesions=lesions, involvement=involvement, regions=regions)
    for view in result.missing:
        notes.append(f"{view.value} view missing: the index uses the other view only")
    measured = [burden.involvement for burden in views.values() if burden.involvement]
    if not measured:
        return BoneBurden(views=views, bsi_percent=None, involvement={}, notes=tuple(notes),
                          anatomy_mapped=bool(result.anatomy))
    combined = {group.name: max(m[group.name] for m in measured) for group in SPIERS_GROUPS}
    bsi = 100.0 * sum(
        combined[group.name] * group.spiers_percent / _TOTAL_PERCENT for group in SPIERS_GROUPS
    )
    return BoneBurden(views=views, bsi_percent=float(bsi), involvement=combined, notes=tuple(notes),
                      anatomy_mapped=bool(result.anatomy))


def _site(lesion: Lesion, source: ViewSource, regions: SkeletalRegions | None) -> str | None:
    """The region of the lesion's centroid, mapped from the stored frame to canonical."""
    if regions is None:
        return None
    row, column = lesion.centroid
    if source.flip_ud:
        row = source.rows - 1 - row
    if source.flip_lr:
        column = source.columns - 1 - column
    region = regions.region_at(row, column)
    return region.site if region is not None else None


def _involvement(mask: np.ndarray, regions: SkeletalRegions) -> dict[str, float]:
    lesion = mask.astype(bool)
    fractions = {}
    for group in SPIERS_GROUPS:
        inside = np.isin(regions.labels, [int(r) for r in group.regions])
        involved = int(np.count_nonzero(lesion & inside))
        skeleton = int(np.count_nonzero((regions.bone | lesion) & inside))
        fractions[group.name] = involved / skeleton if skeleton else 0.0
    return fractions
