"""Secondary Capture: valid RGB picture, contours where the lesions are, legend, burned-in flag."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.planar.burden import assess_burden
from dicomnode.pipeline.results.common import Provenance, match_sources
from dicomnode.pipeline.results.planar.contours import lesion_outlines
from dicomnode.pipeline.results.planar.sc import CONTOUR_COLOR, render
from dicomnode.segmentation.regions import skeletal_regions
from tests.test_results_inputs import dciodvfy_errors, make_study, write

SC_ONLY = ResultOptions(kinds=(ResultKind.SC,))


def _picture(study):
    frames = match_sources(study.result, study.sources)
    provenance = Provenance(options=SC_ONLY, study_instance_uid=study.result.scan.study_instance_uid,
                            algorithm=study.result.algorithm, threshold=study.result.threshold, study_version=1,
                            created=datetime.now(), source_uids=())
    return render(frames, provenance, assess_burden(study.result))


def _is_contour(pixels: np.ndarray) -> np.ndarray:
    return np.all(pixels == np.array(CONTOUR_COLOR, np.uint8), axis=-1)


@pytest.mark.parametrize(("layout", "rows", "columns", "spacing"),
                         [("multiframe", 1024, 256, 2.26), ("split", 2048, 512, 1.13)])
def test_sc_is_a_valid_rgb_picture_with_burned_in_annotation(
    layout: str, rows: int, columns: int, spacing: float, tmp_path: Path
) -> None:
    study = make_study(layout, rows=rows, columns=columns, spacing=spacing)
    (_, sc), = build_results(study.result, study.sources, SC_ONLY)
    (path,) = write(tmp_path, [sc], "sc")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (back.SamplesPerPixel, back.PhotometricInterpretation, back.BitsAllocated) == (3, "RGB", 8)
    assert back.BurnedInAnnotation == "YES"
    assert "NOT FOR DIAGNOSTIC USE" in back.ImageComments
    assert back.ConversionType == "WSD"
    assert back.PatientOrientation == ""  # two panels with opposite column directions
    pixels = back.pixel_array
    assert pixels.shape[1] > 2 * columns  # both views side by side
    assert back.StudyDescription == study.sources[0].StudyDescription
    Image.fromarray(pixels).save(tmp_path / "sc.png")
    np.testing.assert_array_equal(pixels, _picture(study).pixels)


def test_sc_contours_surround_each_lesion_and_only_lesions() -> None:
    study = make_study("multiframe")
    picture = _picture(study)
    contour = _is_contour(picture.pixels)
    for view, view_result in study.result.views.items():
        for outline in lesion_outlines(view_result):
            for x, y in outline:
                px, py = picture.to_picture(view, float(x), float(y))
                c, r = int(px), int(py)
                assert contour[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any()
    empty = _picture(make_study("multiframe", with_lesions=False))
    panels = _is_contour(empty.pixels)
    first_row, last_row = empty.rows_shown
    for view, image in study.result.scan.views.items():
        left, top = empty.to_picture(view, 0, first_row)
        rows, columns = (last_row - first_row) * empty.scale, image.source.columns * empty.scale
        assert not panels[int(top) : int(top) + rows, int(left) : int(left) + columns].any()
    # The panels show the counts: the bladder (hottest) is darker than the background.
    left, top = picture.origins[next(iter(study.result.views))]
    gray = picture.pixels[top:, left:, 0]
    assert gray.min() < 30 and np.median(gray) > 200


@pytest.mark.parametrize(("rows", "columns", "spacing"), [(1024, 256, 2.26), (2048, 512, 1.13), (512, 128, 4.52)])
def test_sc_layout_bone_window_crop_spacing_and_lesion_numbers(rows: int, columns: int, spacing: float) -> None:
    study = make_study("multiframe", rows=rows, columns=columns, spacing=spacing)
    picture = _picture(study)
    (first, second) = sorted(left for left, _ in picture.origins.values())
    panel = columns * picture.scale
    assert second - first - panel >= max(16, panel // 16)  # sensible gap at every matrix
    # The empty rows below the feet are left out (the phantom's soles are at 81 % of the rows).
    first_row, last_row = picture.rows_shown
    assert last_row <= 0.86 * rows and first_row < 0.05 * rows
    # Bone window: the skeleton is grey (inverted: high counts dark), not pale: the displayed
    # intensity 255 - grey of bone is at least 40 (the 0-to-99.5th-percentile window gave 4-18).
    image = study.result.scan.anterior
    bone = skeletal_regions(image.counts, image.pixel_spacing).bone
    left, top = picture.to_picture(image.view, 0, 0)
    rr, cc = np.nonzero(bone[first_row:last_row])
    grey = picture.pixels[int(top) + (rr + first_row) * picture.scale, int(left) + cc * picture.scale, 0]
    assert 90 < np.median(grey) <= 215
    # Each lesion carries its number (as in the SR's "ANT lesion n") beside its contour: red text
    # pixels to the right of the lesion's box.
    rgb = picture.pixels.astype(int)
    red = (rgb[:, :, 0] > 150) & (rgb[:, :, 1] < 100) & (rgb[:, :, 2] < 100)  # anti-aliased text
    for view, view_result in study.result.views.items():
        for lesion in view_result.lesions:
            row0, _, row1, col1 = lesion.bbox
            x, y = picture.to_picture(view, col1, row0)
            x += 3  # beyond the contour line (half its width)
            size = 14
            assert red[int(y) - 2 * size : int(y) + size, int(x) : int(x) + 2 * size].any(), lesion.label
