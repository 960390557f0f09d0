"""Pull corrections from the PACS: ``dicomnode corrections pull``.

A viewer such as OHIF stores an edited SEG to its own archive, not to the node. For each study the
node has processed (or each ``--study``), the node asks the PACS — a ``[[destinations]]`` entry —
for the study's series (Study Root C-FIND at SERIES level, PS3.4 C.4.1) and retrieves with C-GET
(PS3.4 C.4.3) every SEG, SR or KO series it holds neither as a result of its own nor as stored
instances. C-GET's storage sub-operations come back on the same association (we take the SCP role
for those SOP classes, PS3.7 D.3.3.4), so the PACS needs no route to the node. Each retrieved
instance goes through the receiver's C-STORE path (:meth:`dicomnode.pipeline.receiver.Receiver.store`:
the same checks, the durable spool, the index), and the corrections pass examines it as it would
one stored by C-STORE (:mod:`dicomnode.learn.corrections`; docs/training.md, "Site labels").
Values the PACS returns are checked (a Series Instance UID must be a valid UID) before they are
used or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from pynetdicom.status import code_to_category
from sqlalchemy import select

from dicomnode.config import NodeConfig
from dicomnode.dicom.peers import Destination
from dicomnode.dicom.scu import associate
from dicomnode.dicom.uids import UIDError, check_uid
from dicomnode.pipeline.receiver import TRANSFER_SYNTAXES, Receiver
from dicomnode.store.db import Database
from dicomnode.store.models import Instance, Job, ResultObject, Study, utcnow
from dicomnode.store.spool import Spool

log = logging.getLogger(__name__)

#: The storage classes a correction arrives in (a SEG, an SR, a rejection note).
CORRECTION_CLASSES = (SegmentationStorage, BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage,
                      Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage)
#: The Modality (0008,0060) of a correction series.
CORRECTION_MODALITIES = frozenset({"SEG", "SR", "KO"})
_QUERY_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class StudyPull:
    """What the PACS held for one study and what the node retrieved."""

    study_instance_uid: str
    series_found: int = 0  # correction series at the PACS
    series_known: int = 0  # of those, already at the node (its own results or stored instances)
    retrieved: int = 0  # instances stored by the C-GETs
    failed: int = 0  # sub-operations the PACS or the node reported failed
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study_instance_uid, "series_found": self.series_found,
                "series_known": self.series_known, "retrieved": self.retrieved, "failed": self.failed,
                "errors": self.errors}


def processed_studies(database: Database, days: int) -> list[str]:
    """The Study Instance UIDs the node processed in the last ``days`` days (newest first)."""
    since = utcnow() - timedelta(days=days)
    with database.session() as session:
        return list(session.scalars(select(Study.study_instance_uid)
                                    .where(Study.processed_at.is_not(None), Study.processed_at >= since,
                                           Study.purged_at.is_(None))
                                    .order_by(Study.processed_at.desc())))


def known_series(database: Database, study_instance_uid: str) -> set[str]:
    """Series of the study the node already holds: its stored instances' and its own results'."""
    with database.session() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_instance_uid))
        if study_id is None:
            return set()
        stored = session.scalars(select(Instance.series_instance_uid).where(Instance.study_id == study_id))
        ours = session.scalars(select(ResultObject.series_instance_uid).join(Job).where(Job.study_id == study_id))
        return set(stored) | set(ours)


def _valid_uid(value: Any) -> str | None:
    """``value`` if :func:`dicomnode.dicom.uids.check_uid` accepts it (the node's one UID rule), else None."""
    try:
        return check_uid(str(value) if value is not None else None)
    except UIDError:
        return None


def correction_series(assoc: Any, study_instance_uid: str) -> list[str]:
    """The study's SEG/SR/KO series at the PACS (C-FIND, SERIES level); invalid answers are dropped."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_instance_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    found = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status is None:
            raise ConnectionError("the PACS did not answer the C-FIND")
        if identifier is None or code_to_category(status.Status) != "Pending":
            continue
        series = _valid_uid(identifier.get("SeriesInstanceUID"))
        if series is not None and str(identifier.get("Modality", "")).upper() in CORRECTION_MODALITIES:
            found.append(series)
    return sorted(set(found))


def retrieve_series(assoc: Any, study_instance_uid: str, series_instance_uid: str) -> tuple[int, int]:
    """C-GET one series; (instances completed, sub-operations failed) from the final response."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_instance_uid
    query.SeriesInstanceUID = series_instance_uid
    completed = failed = 0
    for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
        if status is None:
            raise ConnectionError("the PACS did not answer the C-GET")
        if code_to_category(status.Status) != "Pending":
            completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if code_to_category(status.Status) == "Failure" and not failed:
                failed = 1
    return completed, failed


def pull(config: NodeConfig, database: Database, spool: Spool, source: Destination,
         studies: Sequence[str]) -> list[StudyPull]:
    """Retrieve the correction series of ``studies`` the node lacks from ``source`` (module docstring)."""
    receiver = Receiver(config, database, spool)
    contexts = [(StudyRootQueryRetrieveInformationModelFind, _QUERY_SYNTAXES),
                (StudyRootQueryRetrieveInformationModelGet, _QUERY_SYNTAXES),
                *((uid, TRANSFER_SYNTAXES) for uid in CORRECTION_CLASSES)]
    handlers = [(evt.EVT_C_STORE, lambda event: receiver.store(event, source.ae_title))]
    outcomes = []
    with associate(source, config.node.ae_title, contexts, scp_roles=CORRECTION_CLASSES,
                   evt_handlers=handlers) as assoc:
        for study_instance_uid in studies:
            outcome = StudyPull(study_instance_uid)
            try:
                series = correction_series(assoc, study_instance_uid)
                known = known_series(database, study_instance_uid)
                outcome.series_found = len(series)
                outcome.series_known = sum(s in known for s in series)
                for series_instance_uid in (s for s in series if s not in known):
                    completed, failed = retrieve_series(assoc, study_instance_uid, series_instance_uid)
                    outcome.retrieved += completed
                    outcome.failed += failed
            except (ConnectionError, RuntimeError, ValueError) as exc:
                outcome.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            log.info("corrections pulled", extra=outcome.to_json())
            outcomes.append(outcome)
            if not assoc.is_established:
                break
    return outcomes
