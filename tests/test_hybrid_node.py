"""A bone SPECT/CT exam through a real node (issue "Bone SPECT/CT"): the simulator's CT series and NM
RECON TOMO volume (``dicomnode synth --spect-ct``) sent by dcmtk ``storescu``, the shipped SPECT/CT
MT-UNet on the CPU, and the SEG on the CT series, the TID 1500 SR and the fused SC received by dcmtk
``storescp``; a SPECT volume without CT ends 'not processable' with its reason."""

from __future__ import annotations


import highdicom as hd
import pydicom
import pytest

from dicomnode.synth.spectct import write_exams
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, status_report, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_a_hybrid_exam_gets_its_seg_sr_and_sc_at_the_pacs(tmp_path, storescp):
    manifest = write_exams(tmp_path / "exams", exams=2, seed=11, size="tiny")
    hybrid, spect_only = manifest["exams"]
    hybrid_files = [tmp_path / "exams" / hybrid["folder"] / f["file"] for f in hybrid["files"]]
    spect_only_files = [tmp_path / "exams" / spect_only["folder"] / "spect.dcm"]
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)])
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        for files in (hybrid_files, spect_only_files):
            sent = storescu(files, port)
            assert sent.returncode == 0, sent.stderr
        wait_until(lambda: status_report(config)["jobs"]["done"] == 2 and len(pacs_objects(storescp)) >= 3, 180,
                   "both jobs done and the SPECT/CT results at the PACS")
        status = status_report(config)
        assert status["acquisitions"] == {"processed": 1, "not-processable": 1}
        (refused,) = status["not_processable"]
        assert refused["study_uid"] == spect_only["study_instance_uid"]
        assert "SPECT-only segmentation is not written yet" in refused["reason"]
    delivered = pacs_objects(storescp)
    assert {str(ds.StudyInstanceUID) for ds in delivered} == {hybrid["study_instance_uid"]}
    assert sorted(ds.SOPClassUID.name for ds in delivered) == [
        "Comprehensive 3D SR Storage", "Secondary Capture Image Storage", "Segmentation Storage"]
    (seg,) = [ds for ds in delivered if ds.Modality == "SEG"]
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    ct_uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
               for path in hybrid_files if path.parent.name == "ct"}
    referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced <= ct_uids and referenced  # the SEG lies on the CT series
    assert [d.segment_label for d in segmentation.SegmentSequence] == ["Bone metastasis", "Benign bone lesion"]
    assert "Traceback" not in node.log()
