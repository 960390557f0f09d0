"""What a real Siemens Symbia exam set did to the node, rebuilt from synthetic data and sent by dcmtk
``storescu`` (without ``--no-halt``, as a new user sends) to ``dicomnode serve``, dcmtk ``storescp``
the PACS (issue "Every real exam handled right"):

- a sestamibi study whose TOMO states "Sestamibi" and whose whole-body instances state no agent is
  not a bone scan: every acquisition ends "not processable" with the reason, nothing is sent (the
  series descriptions name no bone: a real MIBI exam's do not);
- a SPECT-only result of a model not validated on real scans is not sent unless the site allows it;
- a SPECT/CT exam with a whole-body scan, whose CT keeps arriving in bursts with the CT's X-Ray
  Radiation Dose SR in the middle, is stored whole (the dose report too, without stopping the
  sender); the whole-body scan is processed at once, and the CT re-opens the study once, when it
  has been quiet for the window, without the planar scan being run again; one log line per
  series for what is normal for CT;
- a later reconstruction of the same SPECT acquisition supersedes the earlier, and its SR says so.
"""

from __future__ import annotations

import copy
import re
import time

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.uid import generate_uid

from dicomnode.synth import write_studies
from dicomnode.synth.other_tracers import as_sestamibi
from dicomnode.synth.spectct import write_exams
from dicomnode.synth.spectct.dicom import dose_report
from tests.peers import free_port
from tests.processing_helpers import (
    NodeProcess,
    pacs_objects,
    status_report,
    storescu,
    wait_until,
    write_node_config,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _save(datasets, folder) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets):
        paths.append(folder / f"{number:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _successes(sent) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", sent.stdout + sent.stderr))


def _comments(sr) -> list[str]:
    return [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence if "TextValue" in item]


def _sestamibi_exam(tmp_path) -> tuple[str, list]:
    """A whole Siemens exam restated as a parathyroid sestamibi study (real exam: the Study Description
    names MIBI, the TOMO states "Sestamibi", the whole-body and the other instances state no agent)."""
    manifest = write_studies(tmp_path / "mibi", studies=1, seed=71, layout="multiframe", png=False, rows=512,
                             columns=128, spacing_mm=4.52, vendor="siemens")
    (study,) = manifest["studies"]
    datasets = []
    for entry in study["files"]:
        ds = pydicom.dcmread(tmp_path / "mibi" / study["folder"] / entry["file"])
        as_sestamibi(ds, entry["kind"])
        datasets.append(ds)
    return study["study_instance_uid"], _save(datasets, tmp_path / "send" / "mibi")


def test_a_sestamibi_study_and_an_unvalidated_spect_only_model_end_not_processable(tmp_path, storescp):
    mibi_uid, mibi_files = _sestamibi_exam(tmp_path)
    manifest = write_exams(tmp_path / "spect", exams=2, seed=11, size="tiny")
    spect_only = manifest["exams"][1]
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)])  # unvalidated_results off
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        for files in (mibi_files, [tmp_path / "spect" / spect_only["folder"] / "spect.dcm"]):
            sent = storescu(files, port)
            assert sent.returncode == 0 and _successes(sent) == len(files), sent.stdout + sent.stderr
        wait_until(lambda: status_report(config)["acquisitions"].get("not-processable") == 3 and not any(
            status_report(config)["jobs"].get(state) for state in ("queued", "running")), 120, "every outcome")
        status = status_report(config)
    assert status["acquisitions"] == {"not-processable": 3}  # whole body + RECON TOMO; the SPECT-only volume
    reasons = {}
    for item in status["not_processable"]:
        reasons.setdefault(item["study_uid"], []).append(item["reason"])
    # the whole-body scan may be decided before the TOMO arrives (both views: ready at once), from the
    # Study Description; the reconstruction with the TOMO's stated agent
    assert len(reasons[mibi_uid]) == 2 and set(reasons[mibi_uid]) <= {
        "the study states radiopharmaceutical 'Sestamibi', not a 99mTc bone agent",
        "the study's description names 'mibi', not a bone scan (no radiopharmaceutical stated)"}
    (spect_reason,) = reasons[spect_only["study_instance_uid"]]
    assert "SPECT-only model" in spect_reason and "not validated on real scans" in spect_reason
    assert "[model] unvalidated_results = true" in spect_reason
    assert pacs_objects(storescp) == []  # nothing sent for either
    log = node.log()
    assert "Sestamibi" in log and "Traceback" not in log


def test_a_spect_ct_exam_with_a_dose_report_and_late_ct_is_one_job_and_a_re_reconstruction_supersedes(
        tmp_path, storescp):
    manifest = write_exams(tmp_path / "spect", exams=2, seed=11, size="tiny")
    hybrid, spect_only = manifest["exams"]
    folder = tmp_path / "spect" / hybrid["folder"]
    cts = [pydicom.dcmread(folder / entry["file"]) for entry in hybrid["files"] if entry["file"].startswith("ct/")]
    for ct in cts:  # the real CT's Station Name was longer than SH allows, on every slice
        ct[0x00081010] = DataElement(0x00081010, "SH", "SYMBIA-T16-STATION-01", validation_mode=0)
    planar = write_studies(tmp_path / "wb", studies=1, seed=72, layout="multiframe", png=False, rows=512,
                           columns=128, spacing_mm=4.52)["studies"][0]
    (whole_body,) = [pydicom.dcmread(tmp_path / "wb" / planar["folder"] / f["file"]) for f in planar["files"]]
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(whole_body, keyword, cts[0].get(keyword))
    third = len(cts) // 3
    bursts = [_save([*cts[:third], dose_report(cts[0]), *cts[third:2 * third]], tmp_path / "send" / "1"),
              _save(cts[2 * third:], tmp_path / "send" / "2"), [folder / "spect.dcm"]]
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port, quiet_seconds=4.0,
                               destinations=[("PACS", storescp.port, storescp.aet)], unvalidated_results=True)
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        sent = storescu(_save([whole_body], tmp_path / "send" / "0"), port)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: len(pacs_objects(storescp)) >= 5, 120, "the whole-body results (the study looks complete)")
        for number, files in enumerate(bursts):
            if number:
                time.sleep(1.5)  # the CT keeps arriving, well within the quiet window
            sent = storescu(files, port)
            assert sent.returncode == 0 and _successes(sent) == len(files), sent.stdout + sent.stderr
        wait_until(lambda: len(pacs_objects(storescp)) >= 8, 240, "planar and SPECT/CT results at the PACS")
        time.sleep(2)
        status = status_report(config)
        # the whole-body scan is ready at once (both views); the CT re-opens the study once, after it
        # has been quiet for the window, and that job does not run the unchanged planar scan again
        assert status["jobs"].get("done") == 2 and sum(status["jobs"].values()) == 2
        assert status["acquisitions"] == {"processed": 2}
        assert status["instances"]["dose-report"] == 1 and status["instances"]["ct"] == len(cts)

        # a day later the same SPECT acquisition is reconstructed again (same description)
        spect = pydicom.dcmread(tmp_path / "spect" / spect_only["folder"] / "spect.dcm")
        again = copy.deepcopy(spect)
        again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        again.SeriesInstanceUID, again.ContentDate, again.SeriesDate = generate_uid(), "20240110", "20240110"
        for files in (_save([spect], tmp_path / "send" / "recon1"), _save([again], tmp_path / "send" / "recon2")):
            before = len(pacs_objects(storescp))
            sent = storescu(files, port)
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda before=before: len(pacs_objects(storescp)) >= before + 3, 240,
                       "the reconstruction's results")
    objects = pacs_objects(storescp)
    assert len(objects) == 8 + 3 + 3
    by_series = {str(ds.SeriesInstanceUID): ds for ds in objects}
    reports = [pydicom.dcmread(path) for path in storescp.files()]
    hybrid_sr = [ds for ds in reports if ds.Modality == "SR" and ds.StudyInstanceUID == hybrid["study_instance_uid"]
                 and ds.SOPClassUID.name == "Comprehensive 3D SR Storage"]
    assert any("SPECT/CT model is not validated on real scans" in text for text in _comments(hybrid_sr[0]))
    planar_sr = [ds for ds in reports if ds.Modality == "SR" and ds.StudyInstanceUID == hybrid["study_instance_uid"]
                 and ds.SOPClassUID.name == "Comprehensive SR Storage"]
    comments = _comments(planar_sr[0])
    assert sum("acquisition '" in text for text in comments) == 1 and any(t.startswith("Views decided") for t in comments)
    recon_srs = sorted((ds for ds in reports if ds.Modality == "SR" and ds.StudyInstanceUID == spect.StudyInstanceUID),
                       key=lambda ds: int(ds.SeriesNumber))
    assert len(recon_srs) == 2
    assert not any("supersedes" in text for text in _comments(recon_srs[0]))
    (note,) = [text for text in _comments(recon_srs[1]) if "supersedes the earlier reconstruction" in text]
    assert str(spect.SeriesInstanceUID) in note and str(again.SeriesInstanceUID) in note
    assert by_series  # every object has its series
    log = node.log()
    assert "Traceback" not in log
    assert len(re.findall(r"acquisition segmented job=\d+ .*objects=5", log)) == 1  # the planar scan once
    assert "acquisition unchanged since an earlier job's outcome" in log
    assert "Number of Frames" not in log  # CT and SR classes have none
    assert len(re.findall(r"exceeds the maximum length", log)) == 1  # one line for the CT series, at INFO
