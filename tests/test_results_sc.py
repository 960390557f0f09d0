"""Secondary Capture: valid RGB picture, contours where the lesions are, legend, burned-in flag."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.burden import assess_burden
from dicomnode.pipeline.results.common import Provenance, match_sources
from dicomnode.pipeline.results.contours import lesion_outlines
from dicomnode.pipeline.results.sc import CONTOUR_COLOR, render
from tests.test_results_inputs import dciodvfy_errors, make_study, write

SC_ONLY = ResultOptions(kinds=(ResultKind.SC,))


def _picture(study):
    frames = match_sources(study.result, study.sources)
    provenance = Provenance(options=SC_ONLY, result=study.result, study_version=1,
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
    assert pixels.shape[0] > rows and pixels.shape[1] > 2 * columns  # both views and a legend
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
    for view, image in study.result.scan.views.items():
        left, top = empty.origins[view]
        rows, columns = image.source.rows * empty.scale, image.source.columns * empty.scale
        assert not panels[top : top + rows, left : left + columns].any()
    # The panels show the counts: the bladder (hottest) is darker than the background.
    left, top = picture.origins[next(iter(study.result.views))]
    gray = picture.pixels[top:, left:, 0]
    assert gray.min() < 30 and np.median(gray) > 200
