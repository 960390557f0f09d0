"""The shipped anatomy map (dicomnode/segmentation/weights/anatomy.*) on simulated studies it never saw, through
the node's own view loader: labels where the simulator put the anatomy, on each view's stored frame,
the midline, and the worker's segmenter reading lesions with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.anatomy import AnatomyLabel
from dicomnode.segmentation.anatomymap import DEFAULT_ANATOMY_CARD, AnatomyMapper
from dicomnode.segmentation.modelcard import ANATOMY_MAP, load_card
from dicomnode.segmentation.scan import View
from dicomnode.train.anatomy import dice_per_label
from dicomnode.train.secondstage import simulated_scan

torch.set_num_threads(1)
SEEDS = (990001, 990002, 990003)  # not among the training seeds (config/train/anatomy.toml: 2500-2819)


@pytest.fixture(scope="module")
def mapper() -> AnatomyMapper:
    return AnatomyMapper.default(device="cpu")


def test_the_shipped_map_is_an_anatomy_card_with_its_sha256():
    card = load_card(DEFAULT_ANATOMY_CARD)
    assert card.task == ANATOMY_MAP and card.network == "anatomy"
    assert card.weights_path.stat().st_size < 4 * 2**20  # a few MB at most
    assert card.metrics["simulated_validation"]["mean_dice"] > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_the_map_finds_the_simulated_anatomy_on_each_stored_frame(mapper, seed):
    study = simulate_study(seed)
    scan = simulated_scan(study, seed)
    anatomy = mapper.map(scan)
    for view in View:
        predicted, truth = anatomy[view].labels, study.anatomy[view]
        assert predicted.shape == truth.shape  # the stored source frame, posterior mirrored
        dice = dice_per_label(predicted, truth)
        for site in ("background", "soft tissue", "skull", "thoracic spine", "pelvis", "femora", "bladder"):
            assert dice[site] > 0.5, (view, site, dice[site])
        assert np.mean(predicted == truth) > 0.85
    (row, column), = [p for m, p in zip(study.mimics, study.mimic_positions_px) if m.kind == "bladder"]
    assert anatomy[View.ANTERIOR].label_at(row, column) is AnatomyLabel.BLADDER
    assert anatomy[View.POSTERIOR].label_at(row, scan.posterior.source.columns - 1 - column) is AnatomyLabel.BLADDER
    rows = np.arange(100, 600)
    for view in View:  # the fitted midline is the patient's, in canonical source pixels
        assert np.abs(anatomy[view].midline.column(rows) - study.midline.column(rows)).max() < 4


def test_the_worker_segmenter_names_lesions_by_region_and_drops_urine():
    from dicomnode.pipeline.models import load_segmenter

    segmenter = load_segmenter("default", "cpu")
    assert segmenter.reader is not None
    seed = 990004
    study = simulate_study(seed, variant="full-bladder")
    result = segmenter.segment(simulated_scan(study, seed))
    assert result.anatomy and set(result.anatomy) == set(View)
    sites = {lesion.site for lesion in result.lesions}
    assert None not in sites and not sites & {"bladder", "kidneys", "soft tissue", "background"}
    assert all(lesion.probability is not None for lesion in result.lesions)
    assert all(d.reason != "suspicious focus" for d in result.dismissed)


def test_the_sr_of_a_read_result_names_sites_with_laterality_and_the_probability():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from dicomnode.pipeline.models import load_segmenter
    from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
    from dicomnode.pipeline.results.planar.sr import SITE_CODES
    from dicomnode.synth.dicom import StudyIdentity, nm_dataset
    from dicomnode.segmentation.views import load_scan

    segmenter = load_segmenter("default", "cpu")
    for seed in range(990005, 990015):
        study = simulate_study(seed)
        sources = [nm_dataset(study, StudyIdentity(seed=seed, index=1), (View.ANTERIOR, View.POSTERIOR), 1)]
        result = segmenter.segment(load_scan(sources))
        if result.lesions:
            break
    assert result.lesions, "no lesion reported on ten simulated studies"
    (_, sr), = build_results(result, sources, ResultOptions(kinds=(ResultKind.SR,)))
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(result.lesions)
    codes_used = {code.value for code in SITE_CODES.values()}
    for group, lesion in zip(groups, result.lesions, strict=True):
        assert group.finding_type.value == codes.SCT.Lesion.value
        (site,) = group.finding_sites
        assert site.value.value in codes_used
        side = lesion.site.split(" ")[0]
        if side in ("left", "right"):
            assert site.laterality.meaning.lower() == side
        (probability,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
        assert probability.value == pytest.approx(lesion.probability, abs=1e-4)


def _text_items(dataset, meaning: str) -> list[str]:
    """Every TEXT content item of an SR tree whose concept name is ``meaning``."""
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning:
            found.append(str(item.TextValue))
        found += _text_items(item, meaning)
    return found


def test_the_results_name_the_anatomy_map_and_the_second_stage_that_read_them():
    import hashlib

    from dicomnode.pipeline.models import load_segmenter
    from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
    from dicomnode.segmentation.judgement import DEFAULT_SECOND_STAGE
    from dicomnode.synth.dicom import StudyIdentity, nm_dataset
    from dicomnode.segmentation.views import load_scan

    seed = 990018  # a study in which both readings report a lesion (TID 4019 sits in each finding's group)
    study = simulate_study(seed)
    sources = [nm_dataset(study, StudyIdentity(seed=seed, index=1), (View.ANTERIOR, View.POSTERIOR), 1)]
    card = load_card(DEFAULT_ANATOMY_CARD)
    stage = "sha256:" + hashlib.sha256(DEFAULT_SECOND_STAGE.read_bytes()).hexdigest()[:12]
    objects = {}
    for second_stage, expected in ((True, stage), (False, "off")):
        result = load_segmenter("default", "cpu", second_stage=second_stage).segment(load_scan(sources))
        assert result.lesions
        assert result.reading is not None and result.reading.anatomy_map == f"{card.name} {card.version}"
        built = build_results(result, sources, ResultOptions(kinds=(ResultKind.SEG, ResultKind.SR)))
        segs = [dataset for kind, dataset in built if kind is ResultKind.SEG]
        (sr,) = [dataset for kind, dataset in built if kind is ResultKind.SR]
        assert len(segs) == 2  # one per view
        for seg in segs:
            identification = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
            assert f"anatomy_map={card.name} {card.version}" in str(identification.AlgorithmParameters)
            assert f"second_stage={expected}" in str(identification.AlgorithmParameters)
        assert f"second_stage={expected}" in _text_items(sr, "Algorithm Parameters")
        (comment,) = [c for c in _text_items(sr, "Comment") if c.startswith("Hot spots read on the anatomy map")]
        assert (stage in comment) == second_stage and ("fixed rules alone" in comment) != second_stage
        objects[second_stage] = {dataset.SOPInstanceUID for _, dataset in built}
    # the same input read by another reading is another result: new UIDs, not a silent overwrite at the PACS
    assert not objects[True] & objects[False]
