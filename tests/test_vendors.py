"""Whole exams as each vendor sends them (``dicomnode synth --vendor``), through a real node: dcmtk
``storescu`` is the camera, dcmtk ``storescp`` the PACS. Every instance is acknowledged with success;
every whole-body acquisition gets its results; statics, TOMO, RECON TOMO and screen captures get none
and are shown by ``status``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.synth import write_studies
from dicomnode.synth.vendors import VENDORS
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RESULTS_PER_ACQUISITION = 5  # a SEG per view, one GSPS, SR and SC


def test_every_vendor_exam_is_stored_whole_and_only_its_whole_body_scans_are_processed(tmp_path, storescp):
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
                               destinations=[("PACS", storescp.port, storescp.aet)])
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        for vendor, (_, files) in exams.items():
            sent = storescu([path for path, _ in files], port)
            assert sent.returncode == 0, sent.stderr
            statuses = re.findall(r"Received Store Response \((\w+)", sent.stdout + sent.stderr)
            assert statuses == ["Success"] * len(files), (vendor, statuses)
        acquisitions = {uid: (2 if vendor == "siemens" else 1) for vendor, (uid, _) in exams.items()}
        total = RESULTS_PER_ACQUISITION * sum(acquisitions.values())
        wait_until(lambda: len(pacs_objects(storescp)) >= total, 180, f"{total} objects at the PACS")
        delivered = pacs_objects(storescp)
        assert len(delivered) == total
        for vendor, (uid, files) in exams.items():
            objects = [ds for ds in delivered if str(ds.StudyInstanceUID) == uid]
            assert len(objects) == RESULTS_PER_ACQUISITION * acquisitions[uid], vendor
            whole_body = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                          for path, entry in files if entry["kind"] == "whole-body"}
            referenced = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                          for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert referenced == whole_body, vendor  # results for every whole-body scan, none for the rest
        report = json.loads(CliRunner().invoke(app, ["status", "--config", str(config), "--json"]).stdout)
        assert report["instances"] == {"whole-body": 2 + 1 + 2 + 2 + 1, "static": 10, "tomo": 5,
                                       "recon-tomo": 5, "secondary-capture": 5}
        assert report["acquisitions"] == {"processed": 6}
    assert "Traceback" not in node.log()
