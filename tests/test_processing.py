"""process_acquisition's error handling (dicomnode/pipeline/processing.py): input errors make an
acquisition "not processable" with their message; a bug in a result builder fails the job, its
message and traceback logged, instead of hiding as "not processable"."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from sqlalchemy import select

from dicomnode.dicom.acquisitions import AcquisitionKind, split_acquisitions
from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline import kinds
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.processing import process_acquisition
from dicomnode.pipeline.queue import QueuePolicy
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.worker import Worker
from dicomnode.store.models import Job, JobState
from dicomnode.store.spool import Spool
from tests.nm_factory import nm_study, phantom_counts
from tests.processing_helpers import sqlite_database, store_study, threshold_segmenter  # noqa: F401

SEG_ONLY = ResultOptions(kinds=(ResultKind.SEG,))


def _acquisition():
    (acquisition,) = split_acquisitions(nm_study(phantom_counts(rows=256, columns=64, seed=3)))
    return acquisition


def test_an_input_error_of_result_building_is_not_processable_with_its_message(segmenter):
    """A result set whose series numbers leave the IS range (PS3.5 §6.2) cannot be written: the
    acquisition is not processable, and the reason says why, not only an exception's type name."""
    run = process_acquisition(_acquisition(), NodeModels(planar=segmenter), SEG_ONLY, result_set=300_000_000)
    assert not run.processed and run.objects == ()
    assert run.reason.startswith("results cannot be built from these headers: series number")
    assert "exceeds the IS range" in run.reason


def _buggy_build(segmented, options, result_set):
    raise TypeError("a bug in a result builder")


def test_a_bug_in_a_result_builder_propagates(segmenter, monkeypatch):
    planar = kinds.KINDS[AcquisitionKind.PLANAR_WHOLE_BODY]
    monkeypatch.setitem(kinds.KINDS, AcquisitionKind.PLANAR_WHOLE_BODY, dataclasses.replace(planar, build=_buggy_build))
    with pytest.raises(TypeError, match="a bug in a result builder"):
        process_acquisition(_acquisition(), NodeModels(planar=segmenter), SEG_ONLY)


def test_a_bug_in_a_result_builder_fails_the_job_with_its_message_and_traceback(tmp_path, segmenter, monkeypatch,
                                                                              caplog):
    planar = kinds.KINDS[AcquisitionKind.PLANAR_WHOLE_BODY]
    monkeypatch.setitem(kinds.KINDS, AcquisitionKind.PLANAR_WHOLE_BODY, dataclasses.replace(planar, build=_buggy_build))
    database = sqlite_database(tmp_path)
    with Spool(tmp_path / "spool") as spool:
        store_study(database, spool, nm_study(phantom_counts(rows=256, columns=64, seed=3)))
        assemble(database, AssemblyPolicy(quiet_seconds=0))
        worker = Worker(database, spool, NodeModels(planar=segmenter), SEG_ONLY, ["PACS"],
                        QueuePolicy(max_attempts=1), owner="w")
        with caplog.at_level(logging.ERROR, logger="dicomnode.pipeline.worker"):
            assert worker.run_once()
    with database.session() as session:
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.FAILED and job.error == "TypeError: a bug in a result builder"
    (record,) = [r for r in caplog.records if r.getMessage() == "job error"]
    assert record.exc_info is not None and "_buggy_build" in caplog.text
    database.dispose()
