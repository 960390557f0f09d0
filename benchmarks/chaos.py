"""Chaos: nothing acknowledged is ever lost — the node SIGKILLed at random, the PACS down for longer
than the old export retry budget, the disk full.

Real processes only: the camera is dcmtk ``storescu`` (one run per study, the study counts as
*acknowledged* once a run exits 0 having seen a success response for every file; a study not
acknowledged is sent again, as a camera would); the node is ``dicomnode serve`` (SQLite, local
spool); the PACS is dcmtk ``storescp`` with ``+uf`` (a new file for every object it receives, so an
object sent twice is seen twice). Studies come from ``dicomnode.synth`` (1024 × 256 at 2.26 mm).

Scenarios (each in a fresh node and PACS):

- ``kills``: the studies stream in while the node is SIGKILLed ``--kills`` times at moments drawn
  from a seeded generator (``--kill-every`` seconds apart at most, after it listens again) and
  restarted at once (receiving, assembling, segmenting or exporting: wherever it is).
- ``outage``: the PACS is down while the studies stream in and for ``--outage`` seconds in all:
  by default twice the retry budget the exporter had before issue 17 (10 attempts, which with this
  run's shortened back-off of 0.5 s doubling to at most 4 s is 27.5 s; with the defaults it was
  about 30 min). Before, every export had ended ``failed`` by then.
- ``disk``: the node's var folder (spool and database) on its own tmpfs (``mount -t tmpfs``, so
  root is needed; skipped with a message otherwise); halfway through the stream a ballast file takes
  every free byte for ``--full-for`` seconds (the receiver answers 0xA700, a job under way meets
  ENOSPC, SQLite "database or disk is full"), then is deleted.

Columns: studies sent; *acknowledged*; *delivered*: acknowledged studies whose latest job's result
objects (SEG, GSPS, SR, SC) are all at the PACS — the node's database names them, the PACS's files
prove them; *lost* = acknowledged − delivered after the drain timeout (must be 0); *duplicates*:
objects the PACS received more than once (harmless, at-least-once delivery); *drain*: seconds from
the end of the last disturbance (the last restart, the PACS back, the ballast deleted) or the last
acknowledgement, whichever came later, to the last acknowledged study's results at the PACS; *failed jobs*: jobs the node ended ``failed``.

    python benchmarks/chaos.py --studies 100 --kills 10          # the shipped default model
    python benchmarks/chaos.py --studies 8 --kills 3 --weights threshold --scenarios kills
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from dicomnode.store.db import connect  # noqa: E402
from dicomnode.store.models import Export, ExportState, Job, JobState, Study, StudyState  # noqa: E402
from dicomnode.synth import write_studies  # noqa: E402
from dicomnode.tools.harness import HarnessError, dcmtk_binary, delivered_results, free_port, wait_for_port  # noqa: E402
from tests.processing_helpers import NodeProcess, fill, mount_tmpfs, storescu, unmount  # noqa: E402

SCENARIOS = ("kills", "outage", "disk")
BACKOFF = (0.5, 4.0)  # [export] backoff_initial_seconds, backoff_max_seconds for every scenario
OLD_EXPORT_ATTEMPTS = 10  # the exporter's retry budget before issue 17 ([export] max_attempts)


def old_retry_budget(initial: float = BACKOFF[0], cap: float = BACKOFF[1], attempts: int = OLD_EXPORT_ATTEMPTS) -> float:
    """Seconds from the first failed export attempt to the last one under the old ``max_attempts``."""
    return sum(min(initial * 2 ** (n - 1), cap) for n in range(1, attempts))


@dataclass
class Row:
    scenario: str
    disturbance: str
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    drain_seconds: float | None = None
    failed_jobs: int = 0
    note: str = ""


class Pacs:
    """dcmtk ``storescp +uf`` on a fixed port, stoppable and startable again (an outage)."""

    def __init__(self, directory: Path) -> None:
        binary = dcmtk_binary("storescp")
        if binary is None:
            raise HarnessError("dcmtk storescp is not installed (apt-get install dcmtk)")
        self.binary, self.directory, self.port, self.aet = binary, directory, free_port(), "PACS"
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self._headers: dict[Path, str] = {}
        self._first_seen: dict[str, float] = {}

    def start(self) -> None:
        with (self.directory.parent / "storescp.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--aetitle", self.aet, "--output-directory", str(self.directory), "+uf", "+xa",
                 str(self.port)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def objects(self) -> Counter[str]:
        """How often each SOP Instance UID arrived (complete files only)."""
        for path in self.directory.iterdir():
            if path in self._headers or not path.is_file():
                continue
            try:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception:  # still being written: the next look sees it whole
                continue
            self._headers[path] = uid
            self._first_seen[uid] = min(self._first_seen.get(uid, float("inf")), path.stat().st_mtime)
        return Counter(self._headers.values())

    def arrived(self, uid: str) -> float:
        return self._first_seen[uid]


class Camera:
    """Streams studies with dcmtk storescu, one run per study, until each one is acknowledged."""

    def __init__(self, studies: dict[str, list[Path]], port: int, rng: random.Random, gap: tuple[float, float]) -> None:
        self.studies, self.port, self.rng, self.gap = studies, port, rng, gap
        self.acknowledged: dict[str, float] = {}
        self.runs = 0
        self.refusals = 0  # runs that got a non-success answer (e.g. 0xA700) or no association
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._stream, daemon=True)

    def start(self, pause: Callable[[], bool] = lambda: False) -> Camera:
        self._pause = pause
        self.thread.start()
        return self

    def _stream(self) -> None:
        while not self.stop_event.is_set():
            waiting = [uid for uid in self.studies if uid not in self.acknowledged]
            if not waiting:
                return
            for uid in waiting:
                while self._pause() and not self.stop_event.is_set():
                    self.stop_event.wait(0.2)
                if self.stop_event.is_set():
                    return
                files = self.studies[uid]
                try:
                    result = storescu(files, self.port, timeout=120)
                except subprocess.TimeoutExpired:
                    result = None
                self.runs += 1
                output = (result.stdout + result.stderr) if result is not None else ""
                if result is not None and result.returncode == 0 and \
                        output.count("Received Store Response (Success)") == len(files):
                    self.acknowledged[uid] = time.time()
                else:
                    self.refusals += 1
                self.stop_event.wait(self.rng.uniform(*self.gap))

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(180)


def write_config(path: Path, *, port: int, var_dir: Path, pacs: Pacs, weights: str, device: str,
                 min_free_bytes: int, lease_seconds: float) -> Path:
    """node.toml: short quiet period, lease, poll and back-off; JSON logs."""
    path.write_text("\n".join([
        "[node]", f"port = {port}", 'host = "127.0.0.1"', "dimse_timeout = 10",
        "[storage]", f'var_dir = "{var_dir}"', f"min_free_bytes = {min_free_bytes}",
        "[assembly]", "quiet_seconds = 2",
        "[queue]", f"lease_seconds = {lease_seconds}", "poll_seconds = 0.2", "environment_retry_seconds = 2",
        "[model]", f'weights = "{weights}"', f'device = "{device}"',
        "[export]", f"backoff_initial_seconds = {BACKOFF[0]}", f"backoff_max_seconds = {BACKOFF[1]}",
        "[logging]", "json = true",
        "[[destinations]]", 'name = "PACS"', 'host = "127.0.0.1"', f"port = {pacs.port}", f'ae_title = "{pacs.aet}"',
    ]) + "\n")
    return path


@dataclass
class Stage:
    """One scenario's node, PACS, studies and camera under ``work``."""

    work: Path
    studies: dict[str, list[Path]]
    args: argparse.Namespace
    var_dir: Path
    min_free_bytes: int = 0
    pacs: Pacs = field(init=False)
    node: NodeProcess = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.pacs = Pacs(self.work / "pacs" / "received")
        self.port = free_port()
        config = write_config(self.work / "node.toml", port=self.port, var_dir=self.var_dir, pacs=self.pacs,
                              weights=self.args.weights, device=self.args.device, min_free_bytes=self.min_free_bytes,
                              lease_seconds=self.args.lease)
        self.node = NodeProcess(config, self.work / "node.log", port=self.port)

    def camera(self, seed: int) -> Camera:
        return Camera(self.studies, self.port, random.Random(seed), (0.1, self.args.gap))

    def database(self):
        return connect(f"sqlite:///{self.var_dir / 'dicomnode.db'}")

    def busy(self) -> set[str]:
        """What the node was doing when it was killed, read from its database afterwards: studies
        still receiving, jobs running (segmenting), exports being sent."""
        database = self.database()
        try:
            with database.session() as session:
                doing = {
                    "receiving": session.scalar(select(func.count()).select_from(Study)
                                                .where(Study.state == StudyState.RECEIVING)),
                    "segmenting": session.scalar(select(func.count()).select_from(Job)
                                                 .where(Job.state == JobState.RUNNING)),
                    "exporting": session.scalar(select(func.count()).select_from(Export)
                                                .where(Export.state == ExportState.SENDING)),
                }
        finally:
            database.dispose()
        return {what for what, count in doing.items() if count} or {"idle"}

    def tally(self, row: Row, camera: Camera, calm_since: float, timeout: float) -> Row:
        """Wait until every acknowledged study is delivered (or ``timeout``); fill in ``row``."""
        acknowledged = set(camera.acknowledged)
        database = self.database()
        delivered: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while True:
                at_pacs = self.pacs.objects()
                for uid in acknowledged - set(delivered):
                    finished, error, results = delivered_results(database, uid)
                    if finished and not error and results and set(results) <= set(at_pacs):
                        delivered[uid] = max(self.pacs.arrived(sop) for sop in results)
                if len(delivered) == len(acknowledged) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            with database.session() as session:
                row.failed_jobs = int(session.scalar(select(func.count()).select_from(Job)
                                                     .where(Job.state == JobState.FAILED)) or 0)
        finally:
            database.dispose()
        row.sent, row.acknowledged, row.delivered = camera.runs, len(acknowledged), len(delivered)
        row.lost = len(acknowledged) - len(delivered)
        row.duplicates = sum(count - 1 for count in at_pacs.values() if count > 1)
        if delivered and row.lost == 0:
            calm_since = max(calm_since, max(camera.acknowledged.values()))
            row.drain_seconds = max(0.0, max(delivered.values()) - calm_since)
        return row

    def close(self) -> None:
        self.node.kill()
        self.pacs.stop()


def scenario_kills(stage: Stage, rng: random.Random) -> Row:
    args = stage.args
    row = Row("kills", f"{args.kills} SIGKILLs, ≤ {args.kill_every:g} s apart")
    stage.pacs.start()
    stage.node.start()
    camera = stage.camera(rng.randrange(1 << 30)).start()
    calm_since = time.time()
    hit: Counter[str] = Counter()
    for _ in range(args.kills):
        time.sleep(rng.uniform(0.5, args.kill_every))
        stage.node.kill()
        hit.update(stage.busy())
        stage.node.start()  # at once, as systemd or a container runtime would
        calm_since = time.time()
    camera.wait(args.timeout)
    camera.stop()
    row.note = "killed while " + ", ".join(f"{what} {count}×" for what, count in sorted(hit.items()))
    return stage.tally(row, camera, calm_since, args.timeout)


def scenario_outage(stage: Stage, rng: random.Random) -> Row:
    args = stage.args
    outage = args.outage if args.outage is not None else 2 * old_retry_budget()
    row = Row("outage", f"PACS down {outage:.0f} s (old budget {old_retry_budget():.1f} s)")
    stage.node.start()  # the PACS is not started: down from the first export on
    down_since = time.monotonic()
    camera = stage.camera(rng.randrange(1 << 30)).start()
    camera.wait(args.timeout)
    time.sleep(max(0.0, outage - (time.monotonic() - down_since)))
    stage.pacs.start()
    back = time.time()
    row.note = f"PACS back after {time.monotonic() - down_since:.0f} s"
    camera.stop()
    return stage.tally(row, camera, back, args.timeout)


def scenario_disk(stage: Stage, rng: random.Random) -> Row:
    args = stage.args
    row = Row("disk", f"disk full {args.full_for:.0f} s (tmpfs {tmpfs_megabytes(args)} MiB)")
    stage.pacs.start()
    stage.node.start()
    camera = stage.camera(rng.randrange(1 << 30)).start()
    while len(camera.acknowledged) < len(stage.studies) // 2 and camera.thread.is_alive():
        time.sleep(0.2)
    ballast = fill(stage.var_dir)  # every free byte, until ENOSPC
    refusals_before = camera.refusals
    time.sleep(args.full_for)
    ballast.unlink()
    freed = time.time()
    refused = camera.refusals - refusals_before
    camera.wait(args.timeout)
    camera.stop()
    row.note = f"{refused} storescu runs refused while full"
    return stage.tally(row, camera, freed, args.timeout)


def tmpfs_megabytes(args: argparse.Namespace) -> int:
    """The disk scenario's tmpfs: ``--tmpfs-mb``, or room for its studies and their results (about
    8 MiB a study with the Secondary Capture) three times over, with the floor at an eighth."""
    return args.tmpfs_mb if args.tmpfs_mb is not None else 64 + 24 * args.other_studies


def run_scenario(name: str, args: argparse.Namespace, work: Path, studies: dict[str, list[Path]],
                 rng: random.Random) -> Row:
    """One scenario in ``work/<name>``; a row with a note instead of numbers when it cannot run here."""
    folder = work / name
    var_dir = folder / "var"
    mounted = False
    if name == "disk":
        if not mount_tmpfs(var_dir, tmpfs_megabytes(args)):
            return Row("disk", "skipped", note="mount -t tmpfs is not allowed here (needs root)")
        mounted = True
    stage = Stage(folder, studies, args, var_dir, min_free_bytes=(tmpfs_megabytes(args) << 20) // 8 if mounted else 0)
    try:
        return {"kills": scenario_kills, "outage": scenario_outage, "disk": scenario_disk}[name](stage, rng)
    finally:
        stage.close()
        if mounted:
            unmount(var_dir)


def render(rows: list[Row]) -> str:
    header = ("scenario", "disturbance", "storescu runs", "acknowledged", "delivered", "lost", "duplicates",
              "drain s", "failed jobs", "note")
    table = [header] + [
        (r.scenario, r.disturbance, str(r.sent), str(r.acknowledged), str(r.delivered), str(r.lost),
         str(r.duplicates), f"{r.drain_seconds:.1f}" if r.drain_seconds is not None else "–", str(r.failed_jobs),
         r.note) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in table]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def synthesize(work: Path, count: int, seed: int) -> dict[str, list[Path]]:
    manifest = write_studies(work, studies=count, seed=seed, layout="mixed", png=False)
    return {s["study_instance_uid"]: [work / s["folder"] / f["file"] for f in s["files"]] for s in manifest["studies"]}


def run(args: argparse.Namespace) -> list[Row]:
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-chaos-") as scratch:
        work = Path(scratch)
        for name in args.scenarios:
            count = args.studies if name == "kills" else args.other_studies
            studies = synthesize(work / f"studies-{count}", count, args.seed % 1000)
            rows.append(run_scenario(name, args, work, studies, rng))
            print(render(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("studies-*"))
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=100, help="studies streamed in the kills scenario")
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs in the kills scenario")
    p.add_argument("--kill-every", type=float, default=15.0, help="at most this many seconds between kills")
    p.add_argument("--gap", type=float, default=1.5, help="at most this many seconds between two studies")
    p.add_argument("--other-studies", type=int, default=20, help="studies in the outage and disk scenarios")
    p.add_argument("--outage", type=float, default=None, help="seconds the PACS is down (default: twice the old budget)")
    p.add_argument("--full-for", type=float, default=20.0, help="seconds the disk stays full")
    p.add_argument("--tmpfs-mb", type=int, default=None, help="size of the disk scenario's tmpfs "
                   "(default: 64 + 24 per study; the floor is an eighth of it)")
    p.add_argument("--lease", type=float, default=10.0, help="[queue] lease_seconds (a killed worker's job waits this)")
    p.add_argument("--weights", default="default", help='"default" (shipped), "threshold" or a model path')
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the camera, then for the drain")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--keep", type=Path, default=None, help="copy the logs, databases and PACS files here")
    return p


def main() -> None:
    args = parser().parse_args()
    started = time.monotonic()
    rows = run(args)
    print(f"chaos: {platform.node()}, {os.cpu_count()} CPUs, model {args.weights} on {args.device}, seed {args.seed}, "
          f"{time.monotonic() - started:.0f} s")
    print(render(rows))
    sys.exit(1 if any(row.lost for row in rows) else 0)


if __name__ == "__main__":
    main()
