"""Whether a scan shows a skeleton (dicomnode/segmentation/skeleton.py), and the node's use of it: a study that
states no tracer is read as a bone scan only when its image shows a skeleton (issue 24, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.pipeline.models import NodeModels, load_segmenter
from dicomnode.pipeline.processing import process_study
from dicomnode.pipeline.results import ResultOptions
from dicomnode.synth.other_tracers import simulate_other_tracer
from dicomnode.synth.simulate import simulate_study, to_stored
from dicomnode.dicom.acquisitions import study_tracer_refusal, tracer_stated
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.skeleton import SPINE_MIN, skeleton_evidence, spine_contrast
from dicomnode.segmentation.views import load_scan
from tests.nm_factory import nm_study


def canonical(stored: dict[View, np.ndarray]) -> dict[View, np.ndarray]:
    """The factory takes canonical counts: the simulator's stored layout mirrored back (the mirror
    of :func:`~dicomnode.synth.simulate.to_stored` is its own inverse)."""
    return {view: to_stored(view, image).astype(np.float64) for view, image in stored.items()}


def unstated(datasets):
    """The study as a camera that states nothing about the tracer sends it."""
    for ds in datasets:
        del ds.RadiopharmaceuticalInformationSequence
        ds.SeriesDescription = "Whole Body"
    assert not tracer_stated(datasets) and study_tracer_refusal(datasets) is None
    return datasets


@pytest.mark.parametrize("seed", range(1, 7))
def test_simulated_bone_scans_show_a_skeleton(seed):
    images = simulate_study(seed).images
    assert spine_contrast(images[View.POSTERIOR], 2.26) >= SPINE_MIN + 0.5


@pytest.mark.parametrize("tracer", ["renal", "soft-tissue"])
@pytest.mark.parametrize("seed", range(1, 4))
def test_scans_without_bone_uptake_show_none(tracer, seed):
    assert spine_contrast(simulate_other_tracer(seed, tracer)[View.POSTERIOR], 2.26) < SPINE_MIN


def test_a_flat_image_shows_none_and_an_empty_one_cannot_be_measured():
    assert spine_contrast(np.full((1024, 256), 40.0), 2.26) < SPINE_MIN
    assert np.isnan(spine_contrast(np.zeros((1024, 256)), 2.26))


def test_the_posterior_view_is_measured_and_the_anterior_without_it():
    bone = canonical(simulate_study(3).images)
    scan = load_scan(nm_study(bone, layout="split"))
    assert skeleton_evidence(scan).view is View.POSTERIOR
    anterior_only = load_scan(nm_study({View.ANTERIOR: bone[View.ANTERIOR]}, layout="split"))
    evidence = skeleton_evidence(anterior_only)
    assert evidence.view is View.ANTERIOR and not evidence.shows_no_skeleton


def test_the_image_decides_only_when_the_study_states_no_tracer():
    models, options = NodeModels(planar=load_segmenter("threshold", device="cpu")), ResultOptions()
    renal = canonical(simulate_other_tracer(5, "renal"))
    [run] = process_study(unstated(nm_study(renal, layout="split")), models, options)
    assert not run.processed
    assert run.reason.startswith("not a bone scan: no radiopharmaceutical is stated and the image shows no skeleton")
    # The same image stated as a bone scan is read as one (the headers decide when they speak).
    [run] = process_study(nm_study(renal, layout="split"), models, options)
    assert run.processed, run.reason
    # A bone scan that states nothing is read: its image shows the skeleton.
    bone = canonical(simulate_study(5).images)
    [run] = process_study(unstated(nm_study(bone, layout="split")), models, options)
    assert run.processed, run.reason
