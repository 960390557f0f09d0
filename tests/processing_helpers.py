"""Helpers shared by the processing-side tests (queue, assembly, worker, export, serve, status)."""

from __future__ import annotations

from datetime import datetime
from hashlib import sha256
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.db import Database, connect
from dicomnode.models import Instance, Study, StudyState, utcnow


def sqlite_database(directory: Path) -> Database:
    """A migrated SQLite database in ``directory``."""
    database = connect(f"sqlite:///{directory / 'node.db'}")
    database.migrate()
    return database


def postgres_database(url: str) -> Database:
    """A migrated PostgreSQL database at ``url`` (the ``postgres_url`` fixture)."""
    database = connect(url)
    database.migrate()
    return database


def add_study(database: Database, views: tuple[str, ...] = ("anterior", "posterior"), *,
              layout: str = "multiframe", state: StudyState = StudyState.RECEIVING,
              last_instance_at: datetime | None = None, version: int = 1) -> int:
    """Index a study with instances covering ``views`` (no files behind them); return its id.

    ``layout="multiframe"`` gives one instance holding every view, ``"split"`` one per view.
    """
    when = last_instance_at or utcnow()
    with database.session(write=True) as session:
        study = Study(study_instance_uid=generate_uid(), state=state, version=version,
                      received_at=when, last_instance_at=when)
        session.add(study)
        session.flush()
        groups = [views] if layout == "multiframe" else [(view,) for view in views]
        series = generate_uid()
        for group in groups:
            session.add(Instance(study_id=study.id, sop_instance_uid=generate_uid(),
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.20", series_instance_uid=series,
                                 views=",".join(group), path=f"none/{len(group)}.dcm",
                                 sha256="0" * 64, size=1, received_at=when))
        return study.id


def store_study(database: Database, spool, datasets, *, state: StudyState = StudyState.RECEIVING) -> int:
    """Put NM datasets into the spool and the index the way the receiver does; return the study id."""
    from dicomnode.worker import encode
    from segmentation.views import stated_views

    with database.session(write=True) as session:
        uid = str(datasets[0].StudyInstanceUID)
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
        if study is None:
            study = Study(study_instance_uid=uid, state=state)
            session.add(study)
            session.flush()
        for ds in datasets:
            data = encode(ds)
            written = spool.write(spool.instance_path(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                                      sha256(data).hexdigest()), data)
            views = ",".join(sorted({item[0].value for item in stated_views(ds) if item is not None}))
            session.add(Instance(study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
                                 sop_class_uid=str(ds.SOPClassUID), series_instance_uid=str(ds.SeriesInstanceUID),
                                 views=views, path=written.path, sha256=written.sha256, size=written.size))
        study.last_instance_at = utcnow()
        return study.id
