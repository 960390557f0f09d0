"""Skeletal regions from counts (dicomnode.segmentation.regions) and the approximate BSI (results.burden)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from dicomnode.pipeline.results.planar.burden import SPIERS_GROUPS, assess_burden
from dicomnode.synth.anatomy import BONE_SITES
from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.regions import Region, skeletal_regions
from dicomnode.segmentation.result import SegmentationResult, ViewResult
from dicomnode.segmentation.scan import View
from tests.test_results_inputs import HEIGHT, LESIONS, TOP, Study, lesions_of, make_study

SIZES = [(1024, 256, 2.26), (2048, 512, 1.13)]
#: The region each bone of the simulator (dicomnode.synth.BONE_SITES) lies in.
REGION_OF_BONE = {
    "skull": Region.SKULL, "mandible": Region.SKULL, "cervical_spine": Region.CERVICAL_SPINE,
    "thoracic_spine": Region.THORACIC_SPINE, "lumbar_spine": Region.LUMBAR_SPINE,
    "sacrum": Region.SACRUM, "pelvis": Region.PELVIS, "ribs": Region.THORACIC_CAGE,
    "sternum": Region.THORACIC_CAGE, "clavicle": Region.THORACIC_CAGE, "scapula": Region.THORACIC_CAGE,
    "humerus": Region.UPPER_LIMBS, "forearm": Region.UPPER_LIMBS, "hand": Region.UPPER_LIMBS,
    "femur": Region.FEMORA, "patella": Region.FEMORA, "tibia": Region.LOWER_LEGS,
    "fibula": Region.LOWER_LEGS, "foot": Region.FEET,
}


def with_masks(study: Study, canonical_masks: dict[View, np.ndarray]) -> SegmentationResult:
    """The study's result with other masks (canonical layout), lesions recomputed from them."""
    views = {}
    for view, image in study.result.scan.views.items():
        stored = image.source.to_stored(canonical_masks.get(view, np.zeros_like(image.counts, np.uint8)))
        views[view] = ViewResult(
            view=view, probability=stored.astype(np.float32), mask=stored.astype(np.uint8),
            lesions=lesions_of(view, stored, image.source.to_stored(image.counts), image.pixel_area_mm2),
        )
    return dataclasses.replace(study.result, views=views)


@pytest.mark.parametrize(("rows", "columns", "spacing"), SIZES)
def test_regions_find_the_body_from_vertex_to_soles(rows: int, columns: int, spacing: float) -> None:
    study = make_study("split", rows=rows, columns=columns, spacing=spacing)
    for image in study.result.scan.views.values():
        regions = skeletal_regions(image.counts, image.pixel_spacing)
        assert not regions.truncated
        # Within 2 % of the field of the drawn vertex and soles, and 2 pixels of the midline.
        assert abs(regions.body_top - TOP * rows) <= 0.02 * rows
        assert abs(regions.body_bottom - (TOP + HEIGHT) * rows) <= 0.02 * rows
        assert abs(regions.midline - (columns / 2 + 3)) <= 2
        assert regions.labels.shape == (rows, columns)
        assert set(np.unique(regions.labels)) == {0, *(int(r) for r in Region)}
        # Bone is found inside the body only, and is a minority of it.
        assert not (regions.bone & (regions.labels == 0)).any()
        assert 0.05 < regions.bone.sum() / (regions.labels > 0).sum() < 0.6


@pytest.mark.parametrize("layout", ["multiframe", "split"])
@pytest.mark.parametrize(("rows", "columns", "spacing"), SIZES)
def test_lesion_sites_are_the_regions_they_were_drawn_in(
    layout: str, rows: int, columns: int, spacing: float
) -> None:
    study = make_study(layout, rows=rows, columns=columns, spacing=spacing)
    burden = assess_burden(study.result)
    for view, drawn in LESIONS.items():
        sites = sorted(item.site for item in burden.views[view].lesions)
        assert sites == sorted(site for _, _, site in drawn)


def test_a_site_given_by_the_segmenter_is_kept() -> None:
    study = make_study("split")
    view_result = study.result.views[View.POSTERIOR]
    lesion = dataclasses.replace(view_result.lesions[0], site="sternum")
    views = dict(study.result.views)
    views[View.POSTERIOR] = dataclasses.replace(view_result, lesions=(lesion,))
    burden = assess_burden(dataclasses.replace(study.result, views=views))
    assert [item.site for item in burden.views[View.POSTERIOR].lesions] == ["sternum"]


def test_regions_agree_with_the_simulator_bone_labels() -> None:
    agree = total = 0
    for seed in (0, 1):
        simulated = simulate_study(seed)
        for view in View:
            flip = view is View.POSTERIOR  # stored mirrored
            counts = simulated.images[view].astype(np.float32)[:, ::-1 if flip else 1]
            truth = simulated.bone_labels[view][:, ::-1 if flip else 1]
            regions = skeletal_regions(counts, (simulated.spacing_mm, simulated.spacing_mm))
            for index, site in enumerate(BONE_SITES, start=1):
                # The sternum overlies the thoracic spine in both projections, the patella the
                # femur's end: neither is separable by position.
                if site in ("sternum", "patella") or not (truth == index).any():
                    continue
                expected = REGION_OF_BONE[site]
                pixels = regions.labels[truth == index]
                share = float(np.mean(pixels == expected))
                assert share > 0.5, f"seed {seed} {view.value} {site}: {share:.2f} in {expected.site}"
                agree += int(np.sum(pixels == expected))
                total += pixels.size
    assert agree / total > 0.8


def test_lesion_sites_agree_with_the_simulated_lesions_bones() -> None:
    agree = total = 0
    for seed in range(4):
        simulated = simulate_study(seed)
        counts = simulated.images[View.ANTERIOR].astype(np.float32)  # anterior: stored = canonical
        regions = skeletal_regions(counts, (simulated.spacing_mm, simulated.spacing_mm))
        for truth in simulated.lesions:
            region = regions.region_at(*truth.position_px)
            agree += region is REGION_OF_BONE[truth.lesion.site]
            total += 1
    assert total >= 20 and agree / total >= 0.75


def test_regions_refuse_a_view_without_a_body() -> None:
    with pytest.raises(ValueError, match="no body"):
        skeletal_regions(np.zeros((1024, 256), np.float32), (2.26, 2.26))
    with pytest.raises(ValueError, match="2-D"):
        skeletal_regions(np.zeros((2, 1024, 256), np.float32), (2.26, 2.26))


def test_spiers_groups_add_up_to_their_bones() -> None:
    for group in SPIERS_GROUPS:
        parts = re.findall(r"(?:(\d+) x )?(\d+\.\d)", group.bones)
        assert sum(int(n or 1) * float(w) for n, w in parts) == pytest.approx(group.spiers_percent)
    assert sum(g.spiers_percent for g in SPIERS_GROUPS) == pytest.approx(100.1)  # Spiers' rounding
    covered = [region for group in SPIERS_GROUPS for region in group.regions]
    assert sorted(covered) == sorted(Region)  # every region weighs in exactly once


def test_bsi_is_the_weighted_involved_fraction_with_the_larger_view_per_group() -> None:
    study = make_study("multiframe", with_lesions=False)
    images = study.result.scan.views
    ant = skeletal_regions(images[View.ANTERIOR].counts, images[View.ANTERIOR].pixel_spacing)
    post = skeletal_regions(images[View.POSTERIOR].counts, images[View.POSTERIOR].pixel_spacing)
    whole_skull = (ant.bone & (ant.labels == Region.SKULL)).astype(np.uint8)
    whole_femora = (post.bone & (post.labels == Region.FEMORA)).astype(np.uint8)
    half_skull = (post.bone & (post.labels == Region.SKULL)).astype(np.uint8)
    skull_rows = np.flatnonzero(half_skull.any(axis=1))
    half_skull[: skull_rows[len(skull_rows) // 2]] = 0  # the lower half of the posterior skull
    result = with_masks(study, {View.ANTERIOR: whole_skull, View.POSTERIOR: whole_femora | half_skull})
    burden = assess_burden(result)
    assert burden.involvement["skull"] == 1.0
    assert burden.involvement["femora"] == 1.0
    assert 0.3 < burden.views[View.POSTERIOR].involvement["skull"] < 0.7
    assert burden.bsi_percent == pytest.approx(100 * (18.4 + 17.8) / 100.1)


def test_no_lesion_gives_zero_and_a_missing_or_blank_view_is_noted() -> None:
    assert assess_burden(make_study("split", with_lesions=False).result).bsi_percent == 0.0
    single = assess_burden(make_study("split", views=(View.ANTERIOR,)).result)
    assert single.bsi_percent is not None and single.bsi_percent > 0
    assert any("posterior view missing" in note for note in single.notes)

    study = make_study("split")
    blank = dataclasses.replace(study.result.scan.posterior, counts=np.zeros((1024, 256), np.float32))
    scan = dataclasses.replace(study.result.scan, posterior=blank)
    burden = assess_burden(dataclasses.replace(study.result, scan=scan))
    assert burden.views[View.POSTERIOR].involvement == {}
    assert [item.site for item in burden.views[View.POSTERIOR].lesions] == [None]
    assert any("posterior view: skeletal regions not found" in note for note in burden.notes)
    assert burden.bsi_percent == pytest.approx(_bsi(burden.views[View.ANTERIOR].involvement))
    assert burden.bsi_percent > 0


def _bsi(involvement: dict[str, float]) -> float:
    return 100 * sum(involvement[g.name] * g.spiers_percent for g in SPIERS_GROUPS) / 100.1
