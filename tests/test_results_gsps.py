"""GSPS: one closed contour per lesion on the right frame, a summary, a sensible window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.common import WINDOW_PERCENTILE
from dicomnode.pipeline.results.contours import lesion_outlines
from segmentation.regions import skeletal_regions
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
            texts.setdefault(key, []).append(text.UnformattedTextValue)
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


def test_gsps_keeps_the_source_window_and_rescale() -> None:
    study = make_study("split")
    for ds in study.sources:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, 0, "US"
    (_, gsps), = build_results(study.result, study.sources, GSPS_ONLY)
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (40.0, 80.0)  # the source's
    assert float(gsps.RescaleSlope) == 2.0 and float(gsps.RescaleIntercept) == 0.0


def test_gsps_computes_a_window_when_the_source_has_none(tmp_path: Path) -> None:
    study = make_study("multiframe")
    for ds in study.sources:
        del ds.WindowCenter, ds.WindowWidth
    (_, gsps), = build_results(study.result, study.sources, GSPS_ONLY)
    (path,) = write(tmp_path, [gsps], "gsps")
    assert dciodvfy_errors(path) == []
    counts = np.concatenate([image.counts.ravel() for image in study.result.scan.views.values()])
    upper = np.percentile(counts[counts > 0], WINDOW_PERCENTILE)
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert float(voi.WindowWidth) == pytest.approx(upper)
    assert float(voi.WindowCenter) == pytest.approx(upper / 2)
    # Bone is shown unsaturated (its median well inside the window); the bladder saturates.
    image = study.result.scan.anterior
    bone = skeletal_regions(image.counts, image.pixel_spacing).bone
    assert np.median(image.counts[bone]) < 0.8 * float(voi.WindowWidth) < counts.max()
    assert float(gsps.RescaleSlope) == 1.0 and float(gsps.RescaleIntercept) == 0.0
