"""GSPS: one closed contour per lesion on the right frame, a summary, a sensible window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.pipeline.results.planar.burden import assess_burden
from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.common import BONE_WINDOW_MULTIPLE
from dicomnode.pipeline.results.planar.contours import lesion_outlines
from dicomnode.segmentation.preprocess import body_mask, reference_level
from dicomnode.segmentation.regions import skeletal_regions
from tests.test_results_inputs import dcentvfy_errors, dciodvfy_errors, make_study, write

GSPS_ONLY = ResultOptions(kinds=(ResultKind.GSPS,))


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_gsps_draws_each_lesion_outline_on_its_source_frame(layout: str, tmp_path: Path) -> None:
    study = make_study(layout)
    (_, gsps), = build_results(study.result, study.sources, GSPS_ONLY)
    (path,) = write(tmp_path, [gsps], "gsps")
    assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(write(tmp_path, study.sources, "nm") + [path]) == []
    back = pydicom.dcmread(path)
    assert {layer.GraphicLayer for layer in back.GraphicLayerSequence} == {"LESIONS", "SUMMARY"}
    drawn: dict[tuple[str, int], list[np.ndarray]] = {}
    texts: dict[tuple[str, int], list[str]] = {}
    captions: dict[tuple[str, int], list[str]] = {}
    for annotation in back.GraphicAnnotationSequence:
        (image,) = annotation.ReferencedImageSequence
        frame = int(image.get("ReferencedFrameNumber", 1))
        assert ("ReferencedFrameNumber" in image) == (layout == "multiframe")
        key = (image.ReferencedSOPInstanceUID, frame)
        for graphic in annotation.get("GraphicObjectSequence", []):
            assert annotation.GraphicLayer == "LESIONS"
            assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
            points = np.asarray(graphic.GraphicData, np.float32).reshape(-1, 2)
            assert len(points) == graphic.NumberOfGraphicPoints
            drawn.setdefault(key, []).append(points)
        for text in annotation.get("TextObjectSequence", []):
            layer = texts if annotation.GraphicLayer == "SUMMARY" else captions
            layer.setdefault(key, []).append(text.UnformattedTextValue)
    for view, image in study.result.scan.views.items():
        key = (image.source.sop_instance_uid, image.source.frame_number)
        expected = lesion_outlines(study.result.views[view])
        assert len(drawn[key]) == len(expected) == len(study.result.views[view].lesions)
        for got, want in zip(drawn[key], expected, strict=True):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got[0], got[-1])
        summary = texts[key]
        n = len(study.result.views[view].lesions)
        assert summary[0].endswith(f"{n} lesion{'s' if n > 1 else ''}, "
                                   f"{sum(l.area_mm2 for l in study.result.views[view].lesions):.1f} mm2")
        assert "NOT FOR DIAGNOSTIC USE" in summary
        # beside each contour its number and region (the site the SR codes)
        sites = {item.lesion.label: item.site for item in assess_burden(study.result).views[view].lesions}
        assert captions[key] == [f"{lesion.label} {sites[lesion.label] or 'site unknown'}"
                                 for lesion in study.result.views[view].lesions]


def test_gsps_keeps_the_source_rescale_and_sets_a_bone_window() -> None:
    study = make_study("split")
    for ds in study.sources:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, 0, "US"
    (_, gsps), = build_results(study.result, study.sources, GSPS_ONLY)
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) != (40.0, 80.0)  # not the camera's
    assert "bone" in voi.WindowCenterWidthExplanation
    assert float(gsps.RescaleSlope) == 2.0 and float(gsps.RescaleIntercept) == 0.0


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_gsps_bone_window_shows_the_skeleton_and_lets_the_bladder_saturate(
    layout: str, tmp_path: Path
) -> None:
    study = make_study(layout)
    (_, gsps), = build_results(study.result, study.sources, GSPS_ONLY)
    (path,) = write(tmp_path, [gsps], "gsps")
    assert dciodvfy_errors(path) == []
    (voi,) = gsps.SoftcopyVOILUTSequence
    center, width = float(voi.WindowCenter), float(voi.WindowWidth)
    assert center == pytest.approx(width / 2)
    levels = [reference_level(image.counts, body_mask(image.counts), 95.0)
              for image in study.result.scan.views.values()]
    assert width == pytest.approx(BONE_WINDOW_MULTIPLE * max(levels))
    for image in study.result.scan.views.values():
        bone = skeletal_regions(image.counts, image.pixel_spacing).bone
        grey = np.clip(image.counts / width, 0, 1) * 255  # the displayed grey, 0 to 255
        # The skeleton is clearly visible (the 0-to-99.5th-percentile window showed it at 4-18),
        # the bladder (the hottest region) saturates.
        assert 60 < np.median(grey[bone]) < 160
        assert image.counts.max() > width
    layers = {layer.GraphicLayer: layer for layer in pydicom.dcmread(path).GraphicLayerSequence}
    assert layers["LESIONS"].GraphicLayerRecommendedDisplayGrayscaleValue == 0xFFFF
    assert len(layers["LESIONS"].GraphicLayerRecommendedDisplayCIELabValue) == 3
