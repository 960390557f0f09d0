"""The result objects in a real web viewer: OHIF 3.13 over Orthanc DICOMweb, in headless Chromium.

For a two-frame study and a study with one instance per view (tests/test_results_inputs.py,
detector geometry as cameras write it), and a two-frame study whose detector items leave Image
Position / Orientation (Patient) empty, all result objects are stored in Orthanc with their
sources, then opened as a physician would, one series at a time (``initialSeriesInstanceUID``):

- each view's SEG: OHIF asks "Do you want to open this Segmentation?", the test answers Yes; the
  segmentation loads without a console error or exception, the viewport shows the SEG's source
  frame, and the overlay's red pixels lie on the view's lesions: every lesion's position (from
  cornerstone's own image-to-canvas mapping) has overlay pixels around it, and no overlay pixel is
  far from a lesion (a mirrored or shifted mask fails);
- the SR: no error boundary, no console error, one outline annotation per lesion of the shown
  frame, labelled with its area and its mean and maximum counts;
- the SC: the picture is displayed (its instance is the viewport's image and the viewport is not
  blank).

Screenshots of every step are kept under ``build/viewer-screenshots/<case>/`` (printed; CI keeps
the folder as an artefact). Peers: tests/browser.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode.pipeline.results import ResultKind, build_results
from dicomnode.pipeline.results.volume.build import build_volume_results
from dicomnode.synth.spectct import write_exams
from dicomnode.segmentation.result import Algorithm
from dicomnode.segmentation.scan import View
from dicomnode.segmentation.volume import ct_geometry, nm_volume, resample_labels
from tests.browser import ROOT, Chromium, DicomWebOrthanc, ViewerServer, ohif_dist
from tests.test_results_inputs import Study, make_study
from tests.test_results_orthanc import c_store

pytestmark = [pytest.mark.slow, pytest.mark.network]

SCREENSHOTS = ROOT / "build" / "viewer-screenshots"
#: Seconds OHIF gets to show a series (SwiftShader WebGL on a loaded CI machine is slow).
LOAD_TIMEOUT = 90.0

_SKIP_TOUR = """(() => {
  const hits = Array.from(document.querySelectorAll('button, a, span, div'))
    .filter(e => e.children.length === 0 && (e.innerText || '').trim() === 'Skip all');
  hits.forEach(e => e.click());
  return hits.length;
})()"""
_CLICK_YES = """(() => {
  const hits = Array.from(document.querySelectorAll('button'))
    .filter(b => (b.innerText || '').trim() === 'Yes');
  hits.forEach(b => b.click());
  return hits.length;
})()"""
#: Name the image behind an IMAGE_LOAD_ERROR in the console (OHIF's own listener may fail on it).
_REPORT_LOAD_ERRORS = """(() => {
  const cs = window.cornerstone;
  cs.eventTarget.addEventListener(cs.Enums.Events.IMAGE_LOAD_ERROR, event => {
    const error = event.detail && event.detail.error;
    console.warn('image load error', event.detail && event.detail.imageId,
                 error && (error.message || JSON.stringify(error)));
  });
  return true;
})()"""
_VIEWPORT = """(() => {
  const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
  const viewport = engine && engine.getViewports()[0];
  if (!viewport || !viewport.getCurrentImageId || !viewport.getCurrentImageId()) return null;
  const rect = viewport.canvas.getBoundingClientRect();
  return {imageId: viewport.getCurrentImageId(), left: rect.left, top: rect.top,
          width: rect.width, height: rect.height};
})()"""


def _to_page(browser: Chromium, column: float, row: float) -> tuple[float, float]:
    """Page (CSS pixel) position of a source pixel centre, by cornerstone's own mapping."""
    x, y = browser.evaluate(f"""(() => {{
      const cs = window.cornerstone;
      const viewport = cs.getRenderingEngines()[0].getViewports()[0];
      const world = cs.utilities.imageToWorldCoords(viewport.getCurrentImageId(), [{column}, {row}]);
      const canvas = viewport.worldToCanvas(world);
      const rect = viewport.canvas.getBoundingClientRect();
      return [rect.left + canvas[0], rect.top + canvas[1]];
    }})()""")
    return float(x), float(y)


def _overlay_pixels(png: Path, box: dict) -> np.ndarray:
    """(y, x) page positions of the red overlay pixels inside the viewport ``box``."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (rgb[:, :, 0] > rgb[:, :, 1] + 60) & (rgb[:, :, 0] > rgb[:, :, 2] + 60)
    inside = np.zeros_like(red)
    top, left = int(box["top"]) + 2, int(box["left"]) + 2
    inside[top:int(box["top"] + box["height"]) - 2, left:int(box["left"] + box["width"]) - 2] = True
    return np.argwhere(red & inside)


def _errors(browser: Chromium, server: ViewerServer | None = None) -> list[str]:
    errors = [line for line in browser.console
              if line.startswith("error") or line.startswith("warning: image load error")]
    errors += browser.exceptions
    if errors and server is not None:  # what the viewer asked for and did not get
        errors += [f"HTTP {status} {path}" for path, status in server.requests if status >= 400]
    return errors


def _open(browser: Chromium, server: ViewerServer, study_uid: str, series: Dataset) -> None:
    browser.console.clear()
    browser.exceptions.clear()
    browser.navigate(f"{server.url}/viewer?StudyInstanceUIDs={study_uid}"
                     f"&initialSeriesInstanceUID={series.SeriesInstanceUID}")
    browser.wait_for("document.readyState === 'complete' && !!window.cornerstone", LOAD_TIMEOUT,
                     "OHIF's start")
    browser.evaluate(_REPORT_LOAD_ERRORS)
    browser.pump(2)
    browser.evaluate(_SKIP_TOUR)


@pytest.mark.parametrize(("layout", "geometry"), [
    ("multiframe", True), ("split", True), ("multiframe", False),
], ids=["two-frame", "two-instance", "two-frame-without-detector-geometry"])
def test_ohif_shows_seg_sr_and_sc(
    layout: str, geometry: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(layout, geometry=geometry)
    objects = build_results(study.result, study.sources)
    shots = _screenshots(layout if geometry else f"{layout}-without-geometry", capsys)
    with (
        DicomWebOrthanc(workdir=tmp_path / "orthanc") as pacs,
        ViewerServer(ohif_dist(), pacs.http_port) as server,
        Chromium(tmp_path) as browser,
    ):
        datasets = [*study.sources, *(ds for _, ds in objects)]
        assert c_store(pacs, datasets) == [0] * len(datasets)
        segs = {View.ANTERIOR if ds.SeriesDescription.endswith("ANT") else View.POSTERIOR: ds
                for kind, ds in objects if kind is ResultKind.SEG}
        for view, seg in segs.items():
            _check_seg(browser, server, study, view, seg, shots / f"seg-{view.value}.png")
        _check_sr(browser, server, study, dict(objects)[ResultKind.SR], shots / "sr.png")
        _check_sc(browser, server, study, dict(objects)[ResultKind.SC], shots / "sc.png")


def _screenshots(case: str, capsys: pytest.CaptureFixture[str]) -> Path:
    """The case's screenshot folder, emptied, and printed for the CI log."""
    shots = SCREENSHOTS / case
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    with capsys.disabled():
        print(f"\nviewer screenshots ({case}): {shots}")
    return shots


def _load_seg(browser: Chromium, server: ViewerServer, study_uid: str, seg: Dataset, png: Path) -> dict:
    """Open the SEG's series, answer "Yes" to OHIF's prompt, wait until cornerstone holds it, take
    the screenshot; no error on the way. Returns the viewport's box (:data:`_VIEWPORT`)."""
    _open(browser, server, study_uid, seg)
    # Answer the prompt only once the source frame is shown: a click while OHIF is still
    # loading it races with the viewport's replacement (seen as an IMAGE_LOAD_ERROR and
    # "reading 'getViewUp'" in OHIF 3.13, independent of the SEG).
    browser.wait_for(
        "document.body.innerText.includes('Do you want to open this Segmentation?')",
        LOAD_TIMEOUT, "the 'open this Segmentation?' prompt",
    )
    browser.wait_for(_VIEWPORT, LOAD_TIMEOUT, "the SEG's source image")
    browser.pump(3)
    assert browser.evaluate(_CLICK_YES) == 1
    browser.wait_for(
        "window.cornerstoneTools.segmentation.state.getSegmentations().length > 0", LOAD_TIMEOUT,
        f"the SEG {seg.SeriesDescription} loaded into cornerstone",
    )
    browser.pump(4)
    browser.evaluate(_SKIP_TOUR)
    browser.pump(1)
    browser.screenshot(png)
    text = browser.evaluate("document.body.innerText")
    assert "Loading SEG" not in text, png
    assert "Something went wrong" not in text, png
    errors = _errors(browser, server)
    assert errors == [], "\n".join([str(png), *errors])
    return browser.evaluate(_VIEWPORT)


def _check_seg(browser: Chromium, server: ViewerServer, study: Study, view: View, seg: Dataset,
               png: Path) -> None:
    source = study.result.scan.views[view].source
    box = _load_seg(browser, server, study.result.scan.study_instance_uid, seg, png)
    assert box is not None and source.sop_instance_uid in box["imageId"], (box, png)
    assert box["imageId"].endswith(f"/frames/{source.frame_number}"), (box, png)
    overlay = _overlay_pixels(png, box)
    assert len(overlay) > 0, f"no overlay pixels in {png}"
    lesions = study.result.views[view].lesions
    centres = np.array([_to_page(browser, lesion.centroid[1], lesion.centroid[0])[::-1]
                        for lesion in lesions])  # (y, x)
    distance = np.linalg.norm(overlay[:, None, :] - centres[None, :, :], axis=2)
    for index, lesion in enumerate(lesions):
        assert distance[:, index].min() <= 6, (
            f"{view.value} lesion {lesion.label} at page {centres[index]} has no overlay nearby ({png})")
    assert distance.min(axis=1).max() <= 25, f"overlay pixels away from every lesion ({png})"


def _check_sr(browser: Chromium, server: ViewerServer, study: Study, sr: Dataset, png: Path) -> None:
    _open(browser, server, study.result.scan.study_instance_uid, sr)
    count = browser.wait_for(
        "window.cornerstoneTools.annotation.state.getAllAnnotations().length", LOAD_TIMEOUT,
        "the SR's annotations",
    )
    browser.pump(3)
    browser.evaluate(_SKIP_TOUR)
    browser.pump(1)
    browser.screenshot(png)
    text = browser.evaluate("document.body.innerText")
    assert "Something went wrong" not in text, png
    errors = _errors(browser, server)
    assert errors == [], "\n".join([str(png), *errors])
    shown = browser.evaluate(
        "Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)")
    first = next(iter(study.result.scan.views.values()))
    lesions = study.result.views[first.view].lesions
    assert count >= len(lesions), (count, png)
    for lesion in lesions:
        for label in (f"Area: {lesion.area_mm2:.2f} mm2",
                      f"Mean Nuclear Medicine Projection Activity: {lesion.mean_counts:.2f} {{counts}}",
                      f"Maximum Nuclear Medicine Projection Activity: {lesion.peak_counts:.2f} {{counts}}"):
            assert any(label in text for text in shown), (label, shown, png)


def _check_sc(browser: Chromium, server: ViewerServer, study: Study, sc: Dataset, png: Path) -> None:
    _open(browser, server, study.result.scan.study_instance_uid, sc)
    box = browser.wait_for(
        f"(() => {{ const v = {_VIEWPORT}; return v && v.imageId.includes('{sc.SOPInstanceUID}') && v; }})()",
        LOAD_TIMEOUT, "the SC in the viewport",
    )
    browser.pump(3)
    browser.evaluate(_SKIP_TOUR)
    browser.pump(1)
    browser.screenshot(png)
    errors = _errors(browser, server)
    assert errors == [], "\n".join([str(png), *errors])
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(float)
    top, left = int(box["top"]), int(box["left"])
    viewport = rgb[top:top + int(box["height"]), left:left + int(box["width"])]
    assert viewport.std() > 20, f"the SC viewport looks blank ({png})"


@pytest.mark.parametrize("with_ct", [True, False], ids=["spect-ct", "spect-only"])
def test_ohif_opens_the_spect_results(with_ct: bool, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A SPECT/CT exam's results (SEG on the CT) and a SPECT-only exam's (SEG on the NM volume), with
    the simulator's truth as the segmentation: OHIF loads the SEG into cornerstone without a console
    error and paints it on its source (OHIF opens the SEG at a slice with a lesion), and opens the
    Comprehensive 3D SR and the SC without an error. (OHIF draws an SR's content only as annotations
    from spatial coordinates; the 3-D SR's lesions refer to their SEG segment instead, TID 1411, so
    its viewport stays empty: docs/conformance.md 8.1.4.)"""
    write_exams(tmp_path / "exam", exams=1, seed=21, size="tiny")
    folder = tmp_path / "exam" / "exam_0001"
    cts = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))] if with_ct else []
    nm = pydicom.dcmread(folder / "spect.dcm")
    labels = np.load(folder / "truth.npz")["labels_ct"]
    if not with_ct:
        ct_grid, _ = ct_geometry([pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))])
        labels = resample_labels(labels, ct_grid, nm_volume(nm)[1], 3)
    onehot = np.stack([(labels == k).astype(np.float32) for k in range(3)])
    objects = dict(build_volume_results(cts, nm, onehot, algorithm=Algorithm("dicomnode-mtunet", "test", "mtunet")))
    shots = _screenshots("spect-ct" if with_ct else "spect-only", capsys)
    with (
        DicomWebOrthanc(workdir=tmp_path / "orthanc") as pacs,
        ViewerServer(ohif_dist(), pacs.http_port) as server,
        Chromium(tmp_path) as browser,
    ):
        datasets = [*cts, nm, *objects.values()]
        assert c_store(pacs, datasets) == [0] * len(datasets)
        study_uid = str(nm.StudyInstanceUID)
        png = shots / "seg.png"
        box = _load_seg(browser, server, study_uid, objects[ResultKind.SEG], png)
        segments = browser.evaluate(
            "Object.keys(window.cornerstoneTools.segmentation.state.getSegmentations()[0].segments).length")
        assert segments == 2, png
        assert len(_overlay_pixels(png, box)) > 0, f"no overlay pixels in {png}"  # OHIF shows a lesion slice
        for kind in (ResultKind.SR, ResultKind.SC):
            _open(browser, server, study_uid, objects[kind])
            browser.pump(8)
            browser.evaluate(_SKIP_TOUR)
            browser.pump(1)
            png = browser.screenshot(shots / f"{kind.value.lower()}.png")
            assert "Something went wrong" not in browser.evaluate("document.body.innerText"), png
            assert _errors(browser, server) == [], png
