"""Corrections stored with a study become the study's training label (dicomnode.learn.corrections and
trainset), on a real spool and database: per-view SEGs, a rejection note, a study not yet processed,
and the stable held-out split."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
    generate_uid,
)

from dicomnode.dicom.sop import ResultKind
from dicomnode.learn.corrections import examine_new
from dicomnode.learn.trainset import held_out, label_refs, site_studies
from dicomnode.segmentation.scan import View
from dicomnode.store.models import Job, JobState, LabelKind, ResultObject, Study
from dicomnode.store.spool import Spool
from dicomnode.synth.studies import write_studies
from dicomnode.tools.site import correction_seg
from tests.processing_helpers import sqlite_database, store_study


def _processed(database, study_id: int, patient: str) -> str:
    """Mark a study processed by the node with one SEG result of ours; return that SEG's UID."""
    ours = generate_uid()
    with database.session(write=True) as session:
        session.get(Study, study_id).patient_id = patient
        job = Job(study_id=study_id, study_version=1, state=JobState.DONE)
        session.add(job)
        session.flush()
        session.add(ResultObject(job_id=job.id, kind=ResultKind.SEG, sop_instance_uid=ours,
                                 sop_class_uid=SegmentationStorage, series_instance_uid=generate_uid(), path="r/x.dcm"))
    return ours


def _rejection(of: str, study: Dataset) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = KeyObjectSelectionDocumentStorage, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Manufacturer = study.StudyInstanceUID, generate_uid(), "PACS"
    ds.PatientID = study.PatientID
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "113001", "DCM", "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = [title]
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = SegmentationStorage, of
    series = Dataset()
    series.ReferencedSOPSequence = [reference]
    evidence = Dataset()
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    return ds


def test_corrections_become_labels_per_view_and_a_rejection_makes_the_study_negative(tmp_path: Path) -> None:
    entries = write_studies(tmp_path / "synth", studies=3, seed=4, layout="split", png=False, rows=512,
                            columns=128, spacing_mm=4.52)["studies"]
    views = [{v: pydicom.dcmread(tmp_path / "synth" / e["folder"] / f"{v}.dcm") for v in ("anterior", "posterior")}
             for e in entries]
    database = sqlite_database(tmp_path)
    with Spool(tmp_path / "spool") as spool:
        ids = [store_study(database, spool, list(v.values())) for v in views]
        ours = [_processed(database, ids[0], "P-A"), _processed(database, ids[1], "P-B")]  # the third: not yet

        marked = np.zeros((512, 128), np.uint8)
        marked[200:206, 60:66] = 1
        empty = np.zeros_like(marked)
        series = hd.UID()
        store_study(database, spool, [correction_seg(views[0]["anterior"], marked, series_uid=series, number=1),
                                      correction_seg(views[0]["posterior"], empty, series_uid=series, number=2)])
        store_study(database, spool, [correction_seg(views[1]["anterior"], marked, series_uid=hd.UID(), number=1)])
        store_study(database, spool, [_rejection(ours[1], views[1]["anterior"])])
        store_study(database, spool, [correction_seg(views[2]["anterior"], marked, series_uid=hd.UID(), number=1)])

        recorded = examine_new(database, spool, manufacturer="dicomnode")
        assert sorted((r.study_id, r.kind.value) for r in recorded) == [
            (ids[0], "negative"), (ids[0], "positive"), (ids[1], "negative"),
            (ids[1], "positive")]  # the unprocessed study's SEG waits for a later pass
        assert examine_new(database, spool, manufacturer="dicomnode") == []  # examined once

        refs = label_refs(database)
        assert [(r.study_id, r.kind, len(r.seg_paths)) for r in refs] == [(ids[0], "positive", 2), (ids[1], "negative", 0)]
        first, second = site_studies(database, spool, refs)
        np.testing.assert_array_equal(first.labels[View.ANTERIOR], marked)
        np.testing.assert_array_equal(first.labels[View.POSTERIOR], empty)  # the empty SEG: no lesion there
        assert first.patient_id == "P-A"
        assert set(second.labels) == {View.ANTERIOR, View.POSTERIOR}
        assert not any(m.any() for m in second.labels.values())  # the rejection after the SEG wins

        _processed(database, ids[2], "P-C")  # the third study is processed now: picked up
        assert [r.kind for r in examine_new(database, spool, manufacturer="dicomnode")] == [LabelKind.POSITIVE]
    database.dispose()


def test_the_held_out_split_is_by_patient_and_stable() -> None:
    patients = [f"P{i}" for i in range(200)]
    held = [p for p in patients if held_out(p, 30)]
    assert 40 <= len(held) <= 80  # about 30 %
    assert held == [p for p in patients if held_out(p, 30)]  # the same every time
    assert set(held) <= {p for p in patients if held_out(p, 50)}  # a larger share only adds patients
