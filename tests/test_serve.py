"""``dicomnode serve`` as a real process: dcmtk storescu is the camera, dcmtk storescp or Orthanc the
PACS. Studies in both layouts and a one-view study are received, processed and delivered; a study
that changes after processing is processed again into new series; SIGTERM stops the node cleanly."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomnode.synth import write_studies
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, status_report, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]

SEG, GSPS, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.33"
KIND = {SEG: "SEG", GSPS: "GSPS", SR: "SR",  # PS3.4 B.5; either Secondary Capture class is a picture
        "1.2.840.10008.5.1.4.1.1.7": "SC", "1.2.840.10008.5.1.4.1.1.7.4": "SC"}


def study_files(root: Path, manifest: dict) -> dict[str, list[Path]]:
    return {s["study_instance_uid"]: [root / s["folder"] / f["file"] for f in s["files"]] for s in manifest["studies"]}


def texts(item) -> list[str]:
    """Every TextValue in an SR content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += texts(child)
    return found


def by_study(objects) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for ds in objects:
        grouped.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return grouped


def expected_count(views: int) -> int:
    return views + 3  # a SEG per view, one GSPS, SR and SC


def test_serve_receives_processes_and_delivers(tmp_path, storescp):
    both = study_files(tmp_path / "both", write_studies(tmp_path / "both", studies=2, seed=7, layout="mixed", png=False))
    split = study_files(tmp_path / "one", write_studies(tmp_path / "one", studies=1, seed=8, layout="split", png=False))
    ((one_view_uid, one_view_files),) = split.items()
    anterior = [path for path in one_view_files if pydicom.dcmread(path).DetectorInformationSequence[0]
                .ViewCodeSequence[0].CodeValue == "399321004"]
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)])
    node = NodeProcess(config, tmp_path / "node.log", port=port)
    with node:
        for files in [*both.values(), anterior]:
            sent = storescu(files, port)
            assert sent.returncode == 0, sent.stderr
        total = 2 * expected_count(2) + expected_count(1)
        wait_until(lambda: len(pacs_objects(storescp)) >= total, 120, f"{total} objects at the PACS")
        results = by_study(pacs_objects(storescp))
        assert set(results) == {*both, one_view_uid}
        for uid, objects in results.items():
            views = 1 if uid == one_view_uid else 2
            kinds = sorted(KIND[str(ds.SOPClassUID)] for ds in objects)
            assert kinds == sorted(["SEG"] * views + ["GSPS", "SR", "SC"]), uid
            sources = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (anterior if views == 1 else both[uid])}
            referenced = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                          for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert referenced == sources
        (report,) = [pydicom.dcmread(p) for p in storescp.files()
                     if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == one_view_uid
                     and pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == SR]
        assert any("posterior view missing" in text for text in texts(report))

        # New content for a processed study (same SOP Instance UID, different bytes): processed again.
        changed_uid, changed_files = next(iter(both.items()))
        first_series = {str(ds.SeriesInstanceUID) for ds in results[changed_uid]}
        ds = pydicom.dcmread(changed_files[0])
        pixels = ds.pixel_array.copy()
        pixels.flat[0] += 1
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
        assert storescu([tmp_path / "changed.dcm"], port).returncode == 0
        wait_until(lambda: len(by_study(pacs_objects(storescp))[changed_uid]) >= 2 * expected_count(2), 120,
                   "the changed study's new results")
        again = by_study(pacs_objects(storescp))[changed_uid]
        new_series = {str(ds.SeriesInstanceUID) for ds in again} - first_series
        assert len(again) == 2 * expected_count(2) and len(new_series) >= 4

        # The PACS writes its file before it answers; the node records the delivery on the answer.
        wait_until(lambda: status_report(config)["exports"].get("delivered") == total + expected_count(2), 30,
                   "every delivery recorded")
        report = status_report(config)
        assert report["studies"]["processed"] == 3 and report["jobs"]["done"] == 4
        assert report["exports"]["delivered"] == total + expected_count(2)
        assert report["needs_attention"] is False
        assert node.terminate() == 0
    log = node.log()
    assert "signal SIGTERM: stopping" in log and "node stopped" in log
    assert "Traceback" not in log


def test_serve_delivers_to_orthanc_in_the_source_study(tmp_path, orthanc):
    files = study_files(tmp_path / "s", write_studies(tmp_path / "s", studies=1, seed=9, layout="multiframe", png=False))
    ((study_uid, paths),) = files.items()
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("ORTHANC", orthanc.port, orthanc.aet)])
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        assert storescu(paths, port).returncode == 0
        wait_until(lambda: len(orthanc.sop_instance_uids()) >= expected_count(2), 120, "results in Orthanc")
        assert node.terminate() == 0
    (study,) = orthanc.rest("/studies?expand")
    assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid
    modalities = sorted(series["MainDicomTags"].get("Modality") for series in orthanc.rest(f"/studies/{study['ID']}/series"))
    assert "SEG" in modalities and "SR" in modalities and "PR" in modalities
