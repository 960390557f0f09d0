"""Whole exams as each vendor sends them (``dicomnode synth --vendor``), through a real node: dcmtk
``storescu`` is the camera, dcmtk ``storescp`` the PACS. Every instance is acknowledged with success;
every whole-body acquisition gets its results, and so does every RECON TOMO volume (SPECT-only: these
exams have no CT); statics, raw TOMO and screen captures get none and are shown by ``status``."""

from __future__ import annotations

import re

import pydicom
import pytest

from dicomnode.synth import write_studies
from dicomnode.synth.vendors import VENDORS
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, status_report, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RESULTS_PER_ACQUISITION = 5  # a SEG per view, one GSPS, SR and SC
RESULTS_PER_SPECT = 3  # a SEG on the NM volume, a Comprehensive 3D SR, an SC


def test_every_vendor_exam_is_stored_whole_and_its_whole_body_and_spect_acquisitions_are_processed(
        tmp_path, storescp):
    exams = {}
    for seed, vendor in enumerate(VENDORS, start=40):
        folder = tmp_path / vendor
        manifest = write_studies(folder, studies=1, seed=seed, layout="multiframe", png=False, rows=512,
                                 columns=128, spacing_mm=4.52, vendor=vendor,
                                 phases=2 if vendor == "siemens" else 1)
        (study,) = manifest["studies"]
        exams[vendor] = (study["study_instance_uid"], [(folder / study["folder"] / f["file"], f) for f in study["files"]])
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)],
                               unvalidated_results=True)
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        for vendor, (_, files) in exams.items():
            sent = storescu([path for path, _ in files], port)
            assert sent.returncode == 0, sent.stderr
            statuses = re.findall(r"Received Store Response \((\w+)", sent.stdout + sent.stderr)
            assert statuses == ["Success"] * len(files), (vendor, statuses)
        acquisitions = {uid: (2 if vendor == "siemens" else 1) for vendor, (uid, _) in exams.items()}
        total = RESULTS_PER_ACQUISITION * sum(acquisitions.values()) + RESULTS_PER_SPECT * len(exams)
        wait_until(lambda: len(pacs_objects(storescp)) >= total, 180, f"{total} objects at the PACS")
        delivered = pacs_objects(storescp)
        assert len(delivered) == total
        for vendor, (uid, files) in exams.items():
            objects = [ds for ds in delivered if str(ds.StudyInstanceUID) == uid]
            assert len(objects) == RESULTS_PER_ACQUISITION * acquisitions[uid] + RESULTS_PER_SPECT, vendor
            segmented = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                         for path, entry in files if entry["kind"] in ("whole-body", "recon-tomo")}
            referenced = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                          for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert referenced == segmented, vendor  # results for every whole-body scan and volume, none else
        report = status_report(config)
        assert report["instances"] == {"whole-body": 2 + 1 + 2 + 2 + 1, "static": 10, "tomo": 5,
                                       "recon-tomo": 5, "secondary-capture": 5}
        assert report["acquisitions"] == {"processed": 6 + 5}
    assert "Traceback" not in node.log()


def texts(item) -> list[str]:
    """Every TextValue in an SR content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += texts(child)
    return found


def test_real_world_headers_never_end_in_a_crash(tmp_path, storescp):
    """Broken patient headers are repaired (the SR says what), a re-acquired view supersedes, views of two
    patients are not merged, an 8 x 8 'whole body' is not a bone scan: all acknowledged 0x0000, and each
    ends with results or a 'not processable' reason shown by status."""
    def exam(name: str, seed: int) -> list[pydicom.Dataset]:
        manifest = write_studies(tmp_path / name, studies=1, seed=seed, layout="split", png=False, rows=512,
                                 columns=128, spacing_mm=4.52)
        (study,) = manifest["studies"]
        return [pydicom.dcmread(tmp_path / name / study["folder"] / f["file"]) for f in study["files"]]

    broken = exam("broken", 60)
    for ds in broken:
        ds.PatientBirthDate, ds.SpecificCharacterSet, ds.PatientName = "00000000", "ISO_IR 999", "N" * 100_000
        del ds.StudyID
    three = exam("three", 61)
    again = pydicom.dcmread(tmp_path / "three" / "study_0001" / "anterior.dcm")
    again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = again.SOPInstanceUID[:60] + ".9"
    again.AcquisitionTime = "235900"
    three.append(again)
    mixed = exam("mixed", 62)
    mixed[1].PatientID = "ANOTHER-PATIENT"
    tiny = exam("tiny", 63)[:1]
    tiny[0].Rows = tiny[0].Columns = 8
    tiny[0].PixelData = bytes(8 * 8 * 2)
    files = []
    for name, datasets in (("broken", broken), ("three", three), ("mixed", mixed), ("tiny", tiny)):
        for number, ds in enumerate(datasets):
            path = tmp_path / "send" / name / f"{number}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)],
                               unvalidated_results=True)
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        sent = storescu(files, port)
        statuses = re.findall(r"Received Store Response \((\w+)", sent.stdout + sent.stderr)
        assert statuses == ["Success"] * len(files)
        wait_until(lambda: status_report(config)["jobs"]["done"] == 4 and len(pacs_objects(storescp)) >= 10, 120,
                   "four jobs done and two result sets at the PACS")
        status = status_report(config)
        assert status["acquisitions"] == {"processed": 2, "not-processable": 2}
        reasons = {item["study_uid"]: item["reason"] for item in status["not_processable"]}
        assert reasons[str(mixed[0].StudyInstanceUID)] == \
            "the views disagree on patient identity (Patient ID); not merged"
        assert "is not a whole-body scan" in reasons[str(tiny[0].StudyInstanceUID)]
        delivered = pacs_objects(storescp)
        assert {str(ds.StudyInstanceUID) for ds in delivered} == {str(broken[0].StudyInstanceUID),
                                                                  str(three[0].StudyInstanceUID)}
        (report_sr,) = [ds for ds in delivered if ds.StudyInstanceUID == broken[0].StudyInstanceUID
                        and ds.Modality == "SR"]
        notes = " ".join(texts(report_sr))
        assert "Patient's Birth Date was not a valid date" in notes and "Study ID (Type 2) was missing" in notes
        assert report_sr.PatientBirthDate == "" and report_sr.SpecificCharacterSet == "ISO_IR 192"
        segs = [ds for ds in delivered if ds.StudyInstanceUID == three[0].StudyInstanceUID and ds.SOPClassUID == SEG]
        referenced = {str(item.ReferencedSOPInstanceUID) for ds in segs
                      for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert again.SOPInstanceUID in referenced and three[0].SOPInstanceUID not in referenced
    log = node.log()
    assert "Traceback" not in log and "NNNNNNNNNN" not in log and "ANOTHER-PATIENT" not in log
