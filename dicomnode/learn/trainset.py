"""The site's labelled studies, read from the spool, and their stable patient-level held-out split.

A study's label comes from its positive and negative ``site_label`` rows
(:mod:`dicomnode.learn.corrections`): the masks of its correction SEGs, marked or empty (viewers store
one per view; per view the newest wins, :func:`dicomnode.train.datasets.seg_masks`), a view no SEG
covers left unlabelled; a rejection note newer than every SEG gives an empty mask on every view. With ``[learn]
reviewed_results_count`` a processed study without a correction is labelled by the node's own SEG
(docs/training.md, "Site labels"). Masks are in the stored layout of the source frames, as every
:class:`~dicomnode.train.study.LabelledStudy`.

The held-out set is decided by a hash of the Patient ID alone (SHA-256, first 32 bits, modulo 100
below ``held_out_percent``), so a patient's studies stay on one side however many studies the
site adds, and training never sees a held-out patient.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from sqlalchemy import select

from dicomnode.dicom.sop import SEGMENTED_KIND, ObjectKind, ResultKind
from dicomnode.segmentation.views import ViewError, load_scan
from dicomnode.store.db import Database
from dicomnode.store.models import (
    Instance,
    Job,
    JobState,
    LabelKind,
    ResultObject,
    SiteLabel,
    Study,
)
from dicomnode.store.spool import Spool
from dicomnode.train.datasets import TrainingData, seg_masks
from dicomnode.train.seglabels import SegLabelError, read_seg_labels
from dicomnode.train.study import LabelledStudy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelRef:
    """Where one study's label comes from."""

    study_id: int
    kind: str  # "positive", "negative" or "reviewed"
    seg_paths: tuple[str, ...] = ()  # spool-relative SEGs that give the masks (none: negative)


def held_out(patient_id: str, percent: int) -> bool:
    """Whether a patient belongs to the site's held-out set (module docstring)."""
    return int(hashlib.sha256(patient_id.encode()).hexdigest()[:8], 16) % 100 < percent


def label_refs(database: Database, *, reviewed_results_count: bool = False) -> list[LabelRef]:
    """Each labelled study's label (module docstring): its correction SEGs, positive or empty, of
    which per view the newest wins; a rejection note newer than all of them makes it negative."""
    with database.session() as session:
        rows = session.execute(
            select(SiteLabel.study_id, SiteLabel.kind, Instance.kind.label("instance_kind"), Instance.path)
            .join(Instance, Instance.id == SiteLabel.instance_id)
            .where(SiteLabel.kind.in_([LabelKind.POSITIVE, LabelKind.NEGATIVE]))
            .order_by(SiteLabel.study_id, SiteLabel.id)).all()
        segs: dict[int, list[tuple[LabelKind, str]]] = {}
        for row in rows:
            if row.instance_kind == ObjectKind.SEG.value:
                segs.setdefault(row.study_id, []).append((row.kind, row.path))
            else:  # a rejection note: negative, replacing the SEGs before it
                segs[row.study_id] = []
        refs = [LabelRef(study, "positive" if any(k is LabelKind.POSITIVE for k, _ in found) else "negative",
                         tuple(path for _, path in found)) for study, found in segs.items()]
        if reviewed_results_count:
            ours = session.execute(
                select(Job.study_id, ResultObject.path)
                .join(ResultObject, ResultObject.job_id == Job.id)
                .where(Job.state == JobState.DONE, ResultObject.kind == ResultKind.SEG,
                       ResultObject.purged_at.is_(None), Job.study_id.not_in(list(segs)))
                .order_by(Job.study_id, ResultObject.id)).all()
            reviewed: dict[int, list[str]] = {}
            for row in ours:
                reviewed.setdefault(row.study_id, []).append(row.path)
            refs += [LabelRef(study, "reviewed", tuple(paths)) for study, paths in reviewed.items()]
    return sorted(refs, key=lambda ref: ref.study_id)


def _study_images(database: Database, spool: Spool, study_id: int) -> tuple[str, str, list]:
    with database.session() as session:
        study = session.get(Study, study_id)
        paths = session.scalars(select(Instance.path).where(
            Instance.study_id == study_id, Instance.kind == SEGMENTED_KIND, Instance.superseded.is_(False),
            Instance.purged_at.is_(None)).order_by(Instance.id)).all()
        uid, patient = study.study_instance_uid, study.patient_id or ""
    return uid, patient, [pydicom.dcmread(spool.absolute(path)) for path in paths]


def site_studies(database: Database, spool: Spool, refs: Sequence[LabelRef]) -> list[LabelledStudy]:
    """The labelled studies of ``refs`` (a study that cannot be read is logged by row id and left out)."""
    studies = []
    for ref in refs:
        try:
            uid, patient, datasets = _study_images(database, spool, ref.study_id)
            if not patient:
                raise ValueError("no Patient ID: the held-out split is by patient")
            scan = load_scan(datasets)
            if not ref.seg_paths:
                labels = {view: np.zeros((image.source.rows, image.source.columns), np.uint8)
                          for view, image in scan.views.items()}
            else:
                found = [label for path in ref.seg_paths
                         for label in read_seg_labels(pydicom.dcmread(spool.absolute(path)), accept_automatic=True)]
                labels = seg_masks(scan, found, uid)
            if not labels:
                raise ValueError("the label covers none of the study's views")
        except (ViewError, SegLabelError, ValueError, OSError, AttributeError) as exc:
            log.warning("labelled study left out", extra={"study": ref.study_id, "error": type(exc).__name__})
            continue
        studies.append(LabelledStudy(uid, patient, scan, labels, f"site {ref.kind}"))
    return studies


def split_site(studies: Sequence[LabelledStudy], percent: int) -> tuple[list[LabelledStudy], list[LabelledStudy]]:
    """(training, held-out) by :func:`held_out` of each study's Patient ID."""
    training = [s for s in studies if not held_out(s.patient_id, percent)]
    return training, [s for s in studies if held_out(s.patient_id, percent)]


def has_lesion(study: LabelledStudy) -> bool:
    """Whether the study's label marks a lesion in any view."""
    return any(mask.any() for mask in study.labels.values())


def training_data(studies: Sequence[LabelledStudy], extra: TrainingData) -> TrainingData:
    """The site's training studies and ``extra`` (``dicomnode learn --data``) as one training set."""
    return TrainingData([*studies, *extra.studies], extra.crops, {"site spool": "site labels", **extra.formats})
