"""Assembly (docs/architecture.md, "The journey of a study"): ready with both views at once, after
the quiet period otherwise, again for a new version; superseded instances and SEGs do not count as
views."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.store.models import Instance, Job, JobState, Study, StudyState, utcnow
from tests.processing_helpers import add_study, sqlite_database

POLICY = AssemblyPolicy(quiet_seconds=10)


@pytest.fixture
def database(tmp_path):
    db = sqlite_database(tmp_path)
    yield db
    db.dispose()


def state_and_jobs(database, study_id):
    with database.session() as session:
        study = session.get(Study, study_id)
        jobs = session.execute(select(Job.study_version, Job.state).where(Job.study_id == study_id)).all()
        return study.state, sorted(jobs)


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_both_views_are_ready_at_once(database, layout):
    study_id = add_study(database, ("anterior", "posterior"), layout=layout)
    assert assemble(database, POLICY) == [study_id]
    assert state_and_jobs(database, study_id) == (StudyState.READY, [(1, JobState.QUEUED)])
    assert assemble(database, POLICY) == []  # nothing receiving any more


def test_one_view_waits_for_the_quiet_period(database):
    start = utcnow()
    study_id = add_study(database, ("anterior",), last_instance_at=start)
    assert assemble(database, POLICY, now=start + timedelta(seconds=9)) == []
    assert state_and_jobs(database, study_id) == (StudyState.RECEIVING, [])
    assert assemble(database, POLICY, now=start + timedelta(seconds=10)) == [study_id]
    assert state_and_jobs(database, study_id) == (StudyState.READY, [(1, JobState.QUEUED)])


def test_superseded_and_non_nm_instances_do_not_make_a_study_ready(database):
    start = utcnow()
    study_id = add_study(database, ("anterior", "posterior"), layout="split", last_instance_at=start)
    with database.session(write=True) as session:
        posterior = session.scalars(select(Instance).where(Instance.views == "posterior")).one()
        posterior.superseded = True
        anterior = session.scalars(select(Instance).where(Instance.views == "anterior")).one()
        session.add(Instance(study_id=study_id, sop_instance_uid="1.2.3.4", series_instance_uid="1.2.3",
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",  # a SEG sent back
                             kind="seg", views="posterior", path="x", sha256="1" * 64, size=1))
        assert anterior.views == "anterior"
    assert assemble(database, POLICY, now=start + timedelta(seconds=1)) == []


def test_a_changed_study_gets_a_job_for_its_new_version(database):
    study_id = add_study(database)
    assemble(database, POLICY)
    with database.session(write=True) as session:  # processed, then new content (what ingest does)
        job = session.scalars(select(Job)).one()
        job.state = JobState.DONE
        study = session.get(Study, study_id)
        study.version, study.state = 2, StudyState.RECEIVING
    assert assemble(database, POLICY) == [study_id]
    assert state_and_jobs(database, study_id) == (StudyState.READY, [(1, JobState.DONE), (2, JobState.QUEUED)])


def test_a_study_without_any_view_information_is_still_processed_after_the_quiet_period(database):
    start = utcnow()
    study_id = add_study(database, ("",), last_instance_at=start)
    assert assemble(database, POLICY, now=start + timedelta(seconds=11)) == [study_id]


def test_a_study_with_ct_slices_waits_for_the_quiet_period_even_with_both_views(database):
    """A SPECT/CT exam: the whole-body views are present, but the CT keeps arriving; the study is
    ready only once the CT has been quiet for the window (it was re-opened 13 times by one real exam)."""
    start = utcnow()
    study_id = add_study(database, ("anterior", "posterior"), last_instance_at=start)
    with database.session(write=True) as session:
        for number in range(3):
            session.add(Instance(study_id=study_id, sop_instance_uid=f"1.2.3.4.{number}", series_instance_uid="1.2.3.9",
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2", kind="ct", views="", path=f"ct{number}",
                                 sha256=f"{number}" * 64, size=1))
    assert assemble(database, POLICY, now=start + timedelta(seconds=9)) == []
    assert state_and_jobs(database, study_id) == (StudyState.RECEIVING, [])
    assert assemble(database, POLICY, now=start + timedelta(seconds=10)) == [study_id]
    assert state_and_jobs(database, study_id) == (StudyState.READY, [(1, JobState.QUEUED)])
