"""Soak: the node under a steady mixed load for a bounded time, with a short retention period; is
everything that a year unattended would accumulate flat, and is nothing lost?

Real processes only (as ``benchmarks/chaos.py``): ``dicomnode serve`` (SQLite, local spool, the
model of ``--weights`` on the CPU), dcmtk ``storescu`` as the cameras, dcmtk ``storescp +uf`` as the
PACS. The load, for ``--minutes``:

- every ``--gap`` seconds the next exam of a fixed pool, sent again and again: whole-body exams as
  the five simulated vendors send them (whole body, statics, TOMO, RECON TOMO, screen capture;
  ``dicomnode.synth``) and small SPECT/CT exams (CT series + RECON TOMO). An exam sent again after
  retention deleted its files is processed as new; one sent again before is a duplicate;
- every ``--malformed-every`` exams a refused input from the receiver tests' malformed corpus
  (``tests/malformed_corpus.py``), sent unchanged;
- the PACS goes away for ``--outage`` seconds every ``--outage-every`` seconds;
- the node is SIGKILLed and restarted at once every ``--kill-every`` seconds;
- ``[retention] delete_after_hours`` is ``--retention`` seconds, looked at every 20 s.

Every ``--sample`` seconds the node process's RSS, open files and threads (``/proc``), the spool's
bytes on disk (walked), the database's bytes (file + WAL) and the queue depth (jobs queued or
running) are sampled (not in the 20 s after a restart, while the node starts again). The closing table has one row per ``--rows`` of the run; the verdict compares
each quantity's median over the second half of the run after warm-up (the first ``--warmup``
fraction) with that over the first half: flat when it grew by no more than 20 % (and, for counts,
by no more than 3). *Lost*: exams acknowledged (every file 0x0000) whose latest job's results are
not all at the PACS after the load stops and the node has had ``--drain`` seconds (must be 0).

    nice -n 10 python benchmarks/soak.py --minutes 30
    nice -n 10 python benchmarks/soak.py --minutes 12 --weights threshold --kill-every 150
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from benchmarks.chaos import Pacs  # noqa: E402
from dicomnode.store.db import connect  # noqa: E402
from dicomnode.store.models import Job, JobState  # noqa: E402
from dicomnode.synth import write_studies  # noqa: E402
from dicomnode.synth.spectct import write_exams  # noqa: E402
from dicomnode.tools.harness import delivered_results, free_port  # noqa: E402
from tests.malformed_corpus import KINDS, SUCCESS, send_raw  # noqa: E402
from tests.processing_helpers import NodeProcess, storescu  # noqa: E402

warnings.filterwarnings("ignore", module="pydicom")  # the PACS's files read back: leading-zero UIDs (a vendor's)
QUANTITIES = ("rss_mib", "open_files", "threads", "spool_mib", "db_mib", "queue")


@dataclass
class Sample:
    minute: float
    rss_mib: float
    open_files: int
    threads: int
    spool_mib: float
    db_mib: float
    queue: int
    acknowledged: int


def write_config(path: Path, *, port: int, var_dir: Path, pacs: Pacs, weights: str, retention_s: float) -> Path:
    path.write_text("\n".join([
        "[node]", f"port = {port}", 'host = "127.0.0.1"', "dimse_timeout = 10",
        "[storage]", f'var_dir = "{var_dir}"', "min_free_bytes = 0",
        "[assembly]", "quiet_seconds = 2",
        "[queue]", "lease_seconds = 20", "poll_seconds = 0.5", "environment_retry_seconds = 2",
        "[model]", f'weights = "{weights}"', 'device = "cpu"',
        "[export]", "backoff_initial_seconds = 1", "backoff_max_seconds = 8",
        "[retention]", f"delete_after_hours = {retention_s / 3600:.6f}", "early_free_bytes = 0", "interval_seconds = 20",
        "[logging]", "json = true",
        "[[destinations]]", 'name = "PACS"', 'host = "127.0.0.1"', f"port = {pacs.port}", f'ae_title = "{pacs.aet}"',
    ]) + "\n")
    return path


def pool(work: Path, wholebody: int, spect_ct: int, seed: int) -> list[tuple[str, list[Path]]]:
    """(Study Instance UID, files) of the exams sent in turn."""
    exams = []
    manifest = write_studies(work / "wb", studies=wholebody, seed=seed, layout="multiframe", png=False, vendor="mixed")
    for study in manifest["studies"]:
        exams.append((study["study_instance_uid"], [work / "wb" / study["folder"] / f["file"] for f in study["files"]]))
    if spect_ct:
        hybrid = write_exams(work / "spectct", exams=spect_ct, seed=seed + 1000, size="tiny")  # other UIDs
        for exam in hybrid["exams"]:
            folder = work / "spectct" / exam["folder"]
            exams.append((exam["study_instance_uid"], sorted(p for p in folder.rglob("*.dcm"))))
    random.Random(seed).shuffle(exams)
    return exams


def _proc(pid: int) -> tuple[float, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def _bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


class Sampler(threading.Thread):
    def __init__(self, node: NodeProcess, var_dir: Path, every: float, acknowledged: dict) -> None:
        super().__init__(daemon=True)
        self.node, self.var_dir, self.every, self.acknowledged = node, var_dir, every, acknowledged
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()
        self.started = self.restarted = time.monotonic()
        self.restarting = False

    def run(self) -> None:
        database = connect(f"sqlite:///{self.var_dir / 'dicomnode.db'}")
        try:
            while not self.stop_event.wait(self.every):
                if self.restarting or time.monotonic() - self.restarted < 10:
                    continue  # the node is starting again after a kill: not yet at work
                try:
                    rss, files, threads = _proc(self.node.process.pid)
                    with database.session() as session:
                        queue = session.scalar(select(func.count()).select_from(Job).where(
                            Job.state.in_([JobState.QUEUED, JobState.RUNNING]))) or 0
                except (OSError, KeyError, AttributeError):
                    continue  # the node is being restarted
                db = sum(p.stat().st_size for p in self.var_dir.glob("dicomnode.db*"))
                self.samples.append(Sample((time.monotonic() - self.started) / 60, rss, files, threads,
                                           _bytes(self.var_dir / "spool") / 2**20, db / 2**20, int(queue),
                                           len(self.acknowledged)))
        finally:
            database.dispose()


def verdict(samples: list[Sample], warmup: float) -> list[str]:
    """One line per quantity: the median and the peak of the two halves after warm-up; flat when the
    second half's peak is within 20 % of the first half's (a sawtooth, as the spool between two
    retention passes, is bounded when its peaks do not grow), and so is its median."""
    kept = samples[int(len(samples) * warmup):]
    half = len(kept) // 2
    lines = []
    for name in QUANTITIES:
        first, second = [getattr(s, name) for s in kept[:half]], [getattr(s, name) for s in kept[half:]]
        slack = 3 if name in ("open_files", "threads", "queue") else 0
        flat = (max(second) <= max(first) * 1.2 + slack
                and statistics.median(second) <= statistics.median(first) * 1.2 + slack)
        lines.append(f"{name:<11} median {statistics.median(first):8.1f} -> {statistics.median(second):8.1f}, "
                     f"peak {max(first):8.1f} -> {max(second):8.1f}  {'flat' if flat else 'GROWING'}")
    return lines


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="dicomnode-soak-") as scratch:
        work = Path(scratch)
        exams = pool(work / "pool", args.wholebody, args.spect_ct, args.seed)
        refused_kinds = [kind for kind in KINDS if kind.status != SUCCESS]
        pacs = Pacs(work / "pacs" / "received")
        pacs.start()
        port, var_dir = free_port(), work / "var"
        config = write_config(work / "node.toml", port=port, var_dir=var_dir, pacs=pacs, weights=args.weights,
                              retention_s=args.retention)
        node = NodeProcess(config, work / "node.log", port=port)
        node.start()
        acknowledged: dict[str, float] = {}
        sampler = Sampler(node, var_dir, args.sample, acknowledged)
        sampler.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_kill, next_outage = started + args.kill_every, started + args.outage_every
        pacs_back_at = None
        sent = refused = malformed = unsent = kills = outages = 0
        index = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_kill:
                sampler.restarting = True
                node.kill()
                node.start()  # returns when it listens again
                sampler.restarted, sampler.restarting = time.monotonic(), False
                kills += 1
                next_kill = now + args.kill_every
            if pacs_back_at is None and now >= next_outage:
                pacs.stop()
                outages += 1
                pacs_back_at = now + args.outage
            if pacs_back_at is not None and now >= pacs_back_at:
                pacs.start()
                pacs_back_at, next_outage = None, now + args.outage_every
            uid, files = exams[index % len(exams)]
            index += 1
            try:
                result = storescu(files, port, timeout=120)
                ok = result.returncode == 0 and (result.stdout + result.stderr).count(
                    "Received Store Response (Success)") == len(files)
            except (subprocess.SubprocessError, OSError):  # a hung run: sent again when its turn comes
                ok = False
            sent += 1
            if ok:
                acknowledged[uid] = time.time()
            else:
                refused += 1  # sent again when its turn comes round
            if index % args.malformed_every == 0:
                kind = rng.choice(refused_kinds)
                try:
                    send_raw(port, "DICOMNODE", kind.build([]), work / "malformed")
                    malformed += 1
                except (AssertionError, OSError, RuntimeError):  # no association (the node restarting)
                    unsent += 1
            time.sleep(rng.uniform(0.5, args.gap))
        if pacs_back_at is not None:
            pacs.start()
        load_seconds = time.monotonic() - started
        # The drain: every acknowledged exam's latest results at the PACS.
        deadline = time.monotonic() + args.drain
        database = connect(f"sqlite:///{var_dir / 'dicomnode.db'}")
        while True:
            at_pacs = pacs.objects()
            missing = [uid for uid in acknowledged
                       if not ((r := delivered_results(database, uid))[0] and not r[1] and set(r[2]) <= set(at_pacs))]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        database.dispose()
        sampler.stop_event.set()
        sampler.join(30)
        node.kill()
        pacs.stop()
        samples = sampler.samples
        print(f"soak: {platform.node()}, {os.cpu_count()} CPUs, model {args.weights} on cpu, {load_seconds / 60:.1f} min "
              f"of load; {len(exams)} exams in the pool ({args.wholebody} whole-body exams, {args.spect_ct} SPECT/CT), "
              f"sent {sent} times ({refused} not acknowledged, sent again later), {malformed} malformed inputs "
              f"({unsent} found no association), "
              f"{kills} SIGKILLs, {outages} PACS outages of {args.outage:g} s; retention {args.retention:g} s")
        print("| minute | RSS MiB | open files | threads | spool MiB | DB MiB | queue | exams acknowledged |")
        print("|---|---|---|---|---|---|---|---|")
        step = max(1, len(samples) // args.rows)
        for s in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
            print(f"| {s.minute:.1f} | {s.rss_mib:.0f} | {s.open_files} | {s.threads} | {s.spool_mib:.1f} | "
                  f"{s.db_mib:.2f} | {s.queue} | {s.acknowledged} |")
        print(f"flatness (warm-up: the first {args.warmup:.0%} of {len(samples)} samples left out; the second half's "
              "median and peak against the first half's; flat: neither more than +20 %, counts +3):")
        for line in verdict(samples, args.warmup):
            print("  " + line)
        print(f"acknowledged exams {len(acknowledged)}, lost {len(missing)}")
        return 1 if missing else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    p.add_argument("--wholebody", type=int, default=10, help="whole-body exams (five vendors) in the pool")
    p.add_argument("--spect-ct", type=int, default=2, help="SPECT/CT exams (tiny grids) in the pool")
    p.add_argument("--gap", type=float, default=6.0, help="at most this many seconds between two exams")
    p.add_argument("--malformed-every", type=int, default=5, help="a malformed input after every this many exams")
    p.add_argument("--kill-every", type=float, default=180.0,
                   help="seconds between SIGKILLs of the node (longer than --minutes: none, one process's growth)")
    p.add_argument("--outage-every", type=float, default=240.0, help="seconds between PACS outages")
    p.add_argument("--outage", type=float, default=40.0, help="seconds the PACS stays away")
    p.add_argument("--retention", type=float, default=60.0, help="[retention] period in seconds")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--rows", type=int, default=15, help="rows in the closing table")
    p.add_argument("--warmup", type=float, default=0.25, help="fraction of the samples left out as warm-up")
    p.add_argument("--drain", type=float, default=300.0, help="seconds the node gets to deliver after the load")
    p.add_argument("--weights", default="default", help='"default" (shipped), "threshold" or a model path')
    p.add_argument("--seed", type=int, default=28)
    return p


if __name__ == "__main__":
    sys.exit(run(parser().parse_args()))
