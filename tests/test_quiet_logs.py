"""Quiet logs (issue 28): a worker paused for disk space resumes only with headroom above the floor
(hysteresis), and a pixel decoder's ERROR about received bytes the node refuses is not logged."""

from __future__ import annotations

import logging
from pathlib import Path

from dicomnode.config import LoggingSection
from dicomnode.ops.logs import NodeLogHandler, configure_logging
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.queue import QueuePolicy
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.worker import RESUME_HEADROOM_BYTES, Worker, resume_headroom
from dicomnode.store.spool import Spool
from tests.processing_helpers import sqlite_database

MIB = 1 << 20


def test_a_worker_paused_for_disk_space_needs_headroom_to_resume(tmp_path: Path, caplog) -> None:
    database = sqlite_database(tmp_path)
    with Spool(tmp_path / "spool") as spool, caplog.at_level(logging.INFO, logger="dicomnode"):
        worker = Worker(database, spool, NodeModels(), ResultOptions(), [], QueuePolicy())
        spool.min_free_bytes = spool.free_bytes() + 256 * MIB  # the disk is below its floor
        assert resume_headroom(spool.min_free_bytes) == RESUME_HEADROOM_BYTES  # a floor over 512 MiB
        assert (resume_headroom(0), resume_headroom(16 * MIB)) == (MIB, 2 * MIB)
        assert not worker.run_once() and worker.waiting_for == "disk space"
        # Just above the floor again (as when a full disk with floor 0 frees a few bytes): still paused.
        spool.min_free_bytes = spool.free_bytes() - RESUME_HEADROOM_BYTES // 2
        for _ in range(5):
            assert not worker.run_once() and worker.waiting_for == "disk space"
        spool.min_free_bytes = spool.free_bytes() - 4 * RESUME_HEADROOM_BYTES  # room enough: resumes
        assert not worker.run_once() and worker.waiting_for is None
    records = [r for r in caplog.records if r.name == "dicomnode.pipeline.worker"]
    assert [r.getMessage() for r in records] == ["worker paused: waiting for disk space",
                                                 "worker resumed: disk space is back"]
    assert "claims again at" in records[0].__dict__["error"]


def test_a_pixel_decoder_error_is_demoted_to_debug(capsys) -> None:
    handler = configure_logging(LoggingSection())
    try:
        logging.getLogger("pydicom.pixels.decoders.base").error("Invalid segment offset found in the RLE header")
        logging.getLogger("pydicom.other").error("still an error")
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "RLE header" not in err and "still an error" in err
    assert isinstance(handler, NodeLogHandler)
