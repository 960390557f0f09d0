"""A simulated study through the real pipeline (synth → load_scan → postprocess) into every result."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from dicomnode.pipeline.results import ResultKind, build_results
from dicomnode.synth.dicom import StudyIdentity, nm_dataset
from dicomnode.synth.simulate import simulate_study
from dicomnode.segmentation.postprocess import view_result
from dicomnode.segmentation.result import SegmentationResult
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.views import load_scan
from tests.test_results_inputs import ALGORITHM, dcentvfy_errors, dciodvfy_errors, write

LAYOUTS = {
    "multiframe": ((View.ANTERIOR, View.POSTERIOR),),
    "split": ((View.ANTERIOR,), (View.POSTERIOR,)),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_simulated_study_gives_valid_results_that_carry_its_truth(layout: str, tmp_path: Path) -> None:
    simulated = simulate_study(2)
    identity = StudyIdentity(seed=2, index=1)
    sources = [nm_dataset(simulated, identity, views, instance_number=n)
               for n, views in enumerate(LAYOUTS[layout], start=1)]
    scan = load_scan(sources)
    views = {view: view_result(image, simulated.truth[view].astype(np.float32))
             for view, image in scan.views.items()}
    result = SegmentationResult(scan=scan, views=views, algorithm=ALGORITHM)
    objects = build_results(result, sources)

    paths = write(tmp_path, [ds for _, ds in objects], "result")
    for path in paths:
        assert dciodvfy_errors(path) == [], path
    assert dcentvfy_errors(write(tmp_path, sources, "nm") + paths) == []
    for (kind, ds), path in zip(objects, paths, strict=True):
        if kind is not ResultKind.SEG:
            continue
        seg = hd.seg.segread(path)
        (source,) = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
        view = next(v for v, image in scan.views.items()
                    if (image.source.sop_instance_uid, image.source.frame_number)
                    == (source.ReferencedSOPInstanceUID, source.ReferencedFrameNumber))
        pixels = seg.get_pixels_by_source_frame(source.ReferencedSOPInstanceUID,
                                                source_frame_numbers=[source.ReferencedFrameNumber])
        np.testing.assert_array_equal(pixels[0, :, :, 0], simulated.truth[view])
    sr = dict(objects)[ResultKind.SR]
    report = hd.sr.MeasurementReport.from_sequence([sr])
    components = sum(ndimage.label(simulated.truth[v], structure=np.ones((3, 3)))[1] for v in View)
    assert components > 0
    assert len(report.get_image_measurement_groups()) == components
