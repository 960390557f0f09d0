"""Helpers for the receiving-side tests: a real node receiver on a free port, dcmtk as the camera."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.config import NodeConfig
from dicomnode.pipeline.receiver import Receiver, start_receiver
from dicomnode.store.db import Database, connect
from dicomnode.store.models import Instance, Quarantine, Study
from dicomnode.store.spool import Spool
from tests.peers import dcmtk, free_port

NODE_AE = "DICOMNODE"


@dataclass
class Node:
    """A running receiver with its database and spool."""

    config: NodeConfig
    database: Database
    spool: Spool
    receiver: Receiver

    @property
    def port(self) -> int:
        return self.receiver.port

    def instances(self) -> list[Instance]:
        with self.database.session() as session:
            return list(session.scalars(select(Instance).order_by(Instance.id)))

    def studies(self) -> list[Study]:
        with self.database.session() as session:
            return list(session.scalars(select(Study).order_by(Study.id)))

    def quarantined(self) -> list[Quarantine]:
        with self.database.session() as session:
            return list(session.scalars(select(Quarantine).order_by(Quarantine.id)))


@contextmanager
def running_node(directory: Path, database_url: str | None = None, **sections: Any) -> Iterator[Node]:
    """Start a receiver (SQLite in ``directory`` unless ``database_url``); stop it afterwards.

    ``sections`` override config sections, e.g. ``node={"allowed_callers": ["CAMERA"]}``.
    """
    node = {"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(), **sections.pop("node", {})}
    storage = {"var_dir": str(directory / "var"), "min_free_bytes": 0, **sections.pop("storage", {})}
    database_section = {"url": database_url} if database_url else {}
    config = NodeConfig(node=node, storage=storage, database=database_section, **sections)
    database = connect(config.database_url)
    database.migrate()
    spool = Spool(config.storage.spool_path, min_free_bytes=config.storage.min_free_bytes)
    receiver = start_receiver(config, database, spool)
    try:
        yield Node(config, database, spool, receiver)
    finally:
        receiver.stop()
        spool.close()
        database.dispose()


def write_files(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Save datasets as Part 10 files named by SOP Instance UID."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class StoreRun:
    returncode: int
    output: str

    @property
    def statuses(self) -> list[int]:
        """The C-STORE response statuses storescu reported, in order (-1 for one not listed below)."""
        texts = re.findall(r"Received Store Response \(([^)]*)\)", self.output)
        return [DCMTK_STATUS_TEXT.get(text, -1) for text in texts]


# How dcmtk's storescu -v names the statuses the receiver answers (dcmtk DU_cstoreStatusString).
DCMTK_STATUS_TEXT = {
    "Success": 0x0000,
    "Refused: OutOfResources": 0xA700,
    "Error: DataSetDoesNotMatchSOPClass": 0xA900,
    "Error: CannotUnderstand": 0xC000,
    "Unknown Status: 0x110": 0x0110,  # dcmtk has no name for the general Processing failure
}


def storescu(port: int, files: Sequence[Path], *, calling_ae: str = "CAMERA", called_ae: str = NODE_AE,
             extra: Sequence[str] = ()) -> StoreRun:
    """dcmtk ``storescu`` (the camera) sending every one of ``files`` (no halt on a failure) with
    TCP_NODELAY; its verbose output is kept for :attr:`StoreRun.statuses`."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = subprocess.run(
        [dcmtk("storescu"), "-v", "--no-halt", "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    return StoreRun(result.returncode, result.stdout + result.stderr)
