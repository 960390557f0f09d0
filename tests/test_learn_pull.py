"""Corrections pulled from a real PACS (Orthanc) by C-FIND and C-GET (dicomnode.learn.pull): a viewer
stored an edited SEG to the PACS, not to the node; the node retrieves the series it lacks through
its C-STORE path, and the corrections pass makes it a label."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage, generate_uid
from sqlalchemy import select

from dicomnode.config import NodeConfig
from dicomnode.dicom.peers import Destination
from dicomnode.dicom.sop import ResultKind
from dicomnode.learn.corrections import examine_new
from dicomnode.learn.pull import pull
from dicomnode.store.models import Instance, Job, JobState, LabelKind, ResultObject, Study
from dicomnode.store.spool import Spool
from dicomnode.synth.studies import write_studies
from dicomnode.tools.site import correction_seg
from tests.peers import Orthanc, dcmtk
from tests.processing_helpers import sqlite_database, store_study


def _storescu(pacs: Orthanc, files: list[Path]) -> None:
    run = subprocess.run([dcmtk("storescu"), "-R", "-aet", "VIEWER", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), *map(str, files)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.network
def test_a_correction_stored_to_the_pacs_is_pulled_once_and_becomes_a_label(tmp_path: Path, orthanc: Orthanc) -> None:
    entry = write_studies(tmp_path / "synth", studies=1, seed=5, layout="split", png=False, rows=512, columns=128,
                          spacing_mm=4.52)["studies"][0]
    views = [pydicom.dcmread(tmp_path / "synth" / entry["folder"] / f"{v}.dcm") for v in ("anterior", "posterior")]
    study_uid = str(views[0].StudyInstanceUID)
    database = sqlite_database(tmp_path)
    marked = np.zeros((512, 128), np.uint8)
    marked[200:206, 60:66] = 1
    edited = correction_seg(views[0], marked, series_uid=hd.UID(), number=1)  # stored to the PACS only
    already = correction_seg(views[1], marked, series_uid=hd.UID(), number=1)  # stored to both
    with Spool(tmp_path / "spool") as spool:
        study_id = store_study(database, spool, views)
        store_study(database, spool, [already])
        with database.session(write=True) as session:  # the node processed the study: one SEG of its own
            job = Job(study_id=study_id, study_version=1, state=JobState.DONE)
            session.add(job)
            session.flush()
            session.add(ResultObject(job_id=job.id, kind=ResultKind.SEG, sop_instance_uid=generate_uid(),
                                     sop_class_uid=SegmentationStorage, series_instance_uid=generate_uid(),
                                     path="r/x.dcm"))
        files = []
        for number, ds in enumerate([*views, edited, already]):
            files.append(tmp_path / f"to-pacs-{number}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        _storescu(orthanc, files)

        config = NodeConfig(storage={"var_dir": str(tmp_path / "var")})
        pacs = Destination(name="pacs", host="127.0.0.1", port=orthanc.port, ae_title=orthanc.aet)
        (first,) = pull(config, database, spool, pacs, [study_uid])
        assert (first.series_found, first.series_known, first.retrieved, first.failed) == (2, 1, 1, 0), first
        with database.session() as session:
            pulled = session.scalars(select(Instance).where(Instance.sop_instance_uid == edited.SOPInstanceUID)).one()
            assert pulled.calling_ae == orthanc.aet and pulled.kind == "seg"
            assert spool.absolute(pulled.path).read_bytes()[128:132] == b"DICM"  # durably in the spool
        labels = examine_new(database, spool, "dicomnode")
        assert sorted(label.kind for label in labels) == [LabelKind.POSITIVE, LabelKind.POSITIVE]

        (again,) = pull(config, database, spool, pacs, [study_uid])  # nothing new: nothing retrieved
        assert (again.series_found, again.series_known, again.retrieved) == (2, 2, 0)
        (unknown,) = pull(config, database, spool, pacs, [generate_uid()])
        assert unknown.series_found == 0 and not unknown.errors
    with database.session() as session:
        assert session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) == study_id
    # the command a site runs, on the same node: nothing left to pull
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\nspool_dir = "{tmp_path / "spool"}"\n'
                         f'[database]\nurl = "sqlite:///{tmp_path / "node.db"}"\n'
                         f'[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
                         f'ae_title = "{orthanc.aet}"\n')
    run = subprocess.run([sys.executable, "-c", "from dicomnode.cli import main; main()", "corrections", "pull",
                          "--config", str(node_toml), "--study", study_uid, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["studies"] == [{"study": study_uid, "series_found": 2, "series_known": 2,
                                                  "retrieved": 0, "failed": 0, "errors": []}]


def test_the_command_refuses_bad_arguments_before_any_association(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nvar_dir = "{tmp_path / "var"}"\n'
                      '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 1\nae_title = "PACS"\n')
    command = [sys.executable, "-c", "from dicomnode.cli import main; main()", "corrections", "pull",
               "--config", str(config)]
    for extra, says in ((["--from", "other"], "no [[destinations]] entry other"),
                        (["--study", "1.2.x\n"], "not a valid Study Instance UID")):
        run = subprocess.run(command + extra, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and says in run.stderr, run.stderr
