"""A bone SPECT/CT exam through a real node (issue "Bone SPECT/CT"): the simulator's CT series and NM
RECON TOMO volume (``dicomnode synth --spect-ct``) sent by dcmtk ``storescu``, the shipped SPECT/CT
MT-UNet on the CPU, and the SEG on the CT series, the TID 1500 SR and the fused SC received by dcmtk
``storescp``; a SPECT volume without CT is segmented by the shipped SPECT-only model, its SEG on the
NM volume."""

from __future__ import annotations


import highdicom as hd
import pydicom
import pytest

from dicomnode.synth.spectct import write_exams
from tests.peers import free_port
from tests.processing_helpers import NodeProcess, pacs_objects, status_report, storescu, wait_until, write_node_config

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_a_hybrid_and_a_spect_only_exam_get_their_seg_sr_and_sc_at_the_pacs(tmp_path, storescp):
    manifest = write_exams(tmp_path / "exams", exams=2, seed=11, size="tiny")
    hybrid, spect_only = manifest["exams"]
    hybrid_files = [tmp_path / "exams" / hybrid["folder"] / f["file"] for f in hybrid["files"]]
    spect_only_files = [tmp_path / "exams" / spect_only["folder"] / "spect.dcm"]
    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port,
                               destinations=[("PACS", storescp.port, storescp.aet)],
                               unvalidated_results=True)
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        for files in (hybrid_files, spect_only_files):
            sent = storescu(files, port)
            assert sent.returncode == 0, sent.stderr
        wait_until(lambda: status_report(config)["jobs"]["done"] == 2 and len(pacs_objects(storescp)) >= 6, 240,
                   "both jobs done and both result sets at the PACS")
        status = status_report(config)
        assert status["acquisitions"] == {"processed": 2}
    delivered = pacs_objects(storescp)
    by_study = {uid: [ds for ds in delivered if str(ds.StudyInstanceUID) == uid]
                for uid in (hybrid["study_instance_uid"], spect_only["study_instance_uid"])}
    for objects in by_study.values():
        assert sorted(ds.SOPClassUID.name for ds in objects) == [
            "Comprehensive 3D SR Storage", "Secondary Capture Image Storage", "Segmentation Storage"]
    (seg,) = [ds for ds in by_study[hybrid["study_instance_uid"]] if ds.Modality == "SEG"]
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    ct_uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
               for path in hybrid_files if path.parent.name == "ct"}
    assert _referenced(seg) <= ct_uids and _referenced(seg)  # the SEG lies on the CT series
    assert [d.segment_label for d in segmentation.SegmentSequence] == ["Bone metastasis", "Benign bone lesion"]
    (seg,) = [ds for ds in by_study[spect_only["study_instance_uid"]] if ds.Modality == "SEG"]
    nm = pydicom.dcmread(spect_only_files[0], stop_before_pixels=True)
    assert _referenced(seg) == {str(nm.SOPInstanceUID)}  # the SPECT-only SEG lies on the NM volume
    assert seg.FrameOfReferenceUID == nm.FrameOfReferenceUID
    (sr,) = [ds for ds in by_study[spect_only["study_instance_uid"]] if ds.Modality == "SR"]
    comments = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
    assert any(text.startswith("SPECT-only: no CT") for text in comments)
    assert "Traceback" not in node.log()


def _referenced(seg: pydicom.Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence}
