"""End to end: camera → ``dicomnode serve`` → results at the PACS, with real processes only.

The camera is dcmtk ``storescu``, the PACS dcmtk ``storescp`` (``TCP_NODELAY=1`` for both), the node
``dicomnode serve`` (and ``dicomnode worker``) processes with JSON-lines logs and a 0.2 s poll. The
studies come from ``dicomnode.synth`` (1024 × 256 at 2.26 mm).

Latency (default): SQLite; two-frame studies (one instance holding both views) sent one at a time,
each once the previous study's results are all at the PACS. Per study: seconds from the storescu
start to the last result file written by the PACS (its mtime), split with the node's own database
timestamps into receive (until the last instance is stored), assembly (until the job is queued),
queue wait (until a worker claims it), processing (claim → results written) and export (until the
last result is at the PACS). Goal: p95 ≤ 3 s per study on the CPU.

Throughput (``--throughput``): PostgreSQL (a fresh database per run on the local server); ``serve``
(receiver, assembly, exporter and one worker) plus W − 1 ``dicomnode worker`` processes on this host;
all studies sent in one burst; throughput = studies / (last result at the PACS − burst start).
Afterwards it checks that no job ran twice: one job per study, every job DONE at its first attempt,
each job claimed once across all the processes' logs, and the PACS holding each result object
exactly once. Goal: 4 workers ≥ 3.5 × one — which needs 4 devices (GPUs, or ≥ 4 free CPU cores
with one torch thread each); the cores this process may use are printed so the reader can judge.

    python benchmarks/e2e.py                                   # latency, 20 studies, shipped model
    python benchmarks/e2e.py --weights threshold --studies 10
    python benchmarks/e2e.py --throughput --studies 16 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from dicomnode.store.models import as_utc  # noqa: E402
from dicomnode.store.db import Database, connect  # noqa: E402
from dicomnode.store.models import Export, Instance, Job, JobState, ResultObject, Study  # noqa: E402
from dicomnode.synth import write_studies  # noqa: E402
from dicomnode.tools.harness import DcmtkPacs, HarnessError, delivered_results, describe_model  # noqa: E402
from tests.peers import dcmtk, free_port, postgres_available, postgres_database, wait_for_port  # noqa: E402

POLL_SECONDS = 0.2
RESULTS_PER_STUDY = 5  # a SEG per view, GSPS, SR, SC (the default [results] kinds)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_config(path: Path, *, port: int, var_dir: Path, database_url: str | None, pacs: DcmtkPacs,
                 weights: str, device: str) -> Path:
    lines = ["[node]", 'host = "127.0.0.1"', f"port = {port}",
             "[storage]", f'var_dir = "{var_dir}"', "min_free_bytes = 0",
             *(["[database]", f'url = "{database_url}"'] if database_url else []),
             "[queue]", f"poll_seconds = {POLL_SECONDS}", "lease_seconds = 120.0",
             "[model]", f'weights = "{weights}"', f'device = "{device}"',
             "[logging]", "json = true", 'level = "INFO"',
             "[[destinations]]", 'name = "pacs"', 'host = "127.0.0.1"', f"port = {pacs.port}",
             f'ae_title = "{pacs.aet}"']
    path.write_text("\n".join(lines) + "\n")
    return path


class Processes:
    """``dicomnode serve`` plus extra ``dicomnode worker`` processes, each logging JSON lines to a file."""

    def __init__(self, config: Path, logs: Path, port: int, workers: int, threads: int | None) -> None:
        self.config, self.logs, self.port = config, logs, port
        self.commands = ["serve"] + ["worker"] * (workers - 1)
        self.threads = threads
        self.running: list[subprocess.Popen] = []

    def log_path(self, index: int) -> Path:
        return self.logs / f"{index}-{self.commands[index]}.log"

    def __enter__(self) -> Processes:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        for index, command in enumerate(self.commands):
            with self.log_path(index).open("wb") as log:
                self.running.append(subprocess.Popen(
                    [sys.executable, "-c", "from dicomnode.cli import main; main()", command, "--config",
                     str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_for_port(self.port, timeout=180, process=self.running[0])
        deadline = time.monotonic() + 180
        for index, process in enumerate(self.running):  # every worker has loaded its model
            while not any(entry.get("message") == "node started" for entry in self.entries(index)):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path(index).read_text()[-2000:]
                    raise RuntimeError(f"{self.commands[index]} did not start: {log}")
                time.sleep(0.2)
        return self

    def entries(self, index: int) -> list[dict]:
        found = []
        for line in self.log_path(index).read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:  # a line being written
                    continue
        return found

    def claims(self) -> dict[int, list[int]]:
        """Job ids each process logged as claimed (``job claimed``, dicomnode.pipeline.queue)."""
        return {index: [entry["job"] for entry in self.entries(index) if entry.get("message") == "job claimed"]
                for index in range(len(self.running))}

    def __exit__(self, *exc: object) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def storescu(files: list[Path], port: int) -> None:
    sent = subprocess.run([dcmtk("storescu"), "-aet", "CAMERA", "-aec", "DICOMNODE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed ({sent.returncode}): {sent.stderr[-2000:]}")


def wait_delivered(database: Database, study_uid: str, timeout: float = 300) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        finished, error, delivered = delivered_results(database, study_uid)
        if error:
            raise RuntimeError(f"study {study_uid}: {error}")
        if finished:
            return set(delivered)
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study_uid}: no results at the PACS after {timeout:.0f} s")
        time.sleep(0.02)


@dataclass
class Stages:
    receive: float
    assembly: float
    queue: float
    processing: float
    export: float

    @property
    def total(self) -> float:
        return self.receive + self.assembly + self.queue + self.processing + self.export


def stages(database: Database, study_uid: str, sent_at: float, at_pacs: float) -> Stages:
    """Split ``sent_at`` → ``at_pacs`` with the node's timestamps (module docstring)."""
    with database.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        stored = max(as_utc(i.received_at).timestamp() for i in study.instances)
        (job,) = study.jobs
        queued, started, finished = (as_utc(t).timestamp() for t in (job.created_at, job.started_at, job.finished_at))
    return Stages(stored - sent_at, queued - stored, started - queued, finished - started, at_pacs - finished)


def latency(args: argparse.Namespace, work: Path, model: str) -> None:
    manifest = write_studies(work / "studies", studies=args.studies, seed=args.seed, layout="multiframe", png=False)
    pacs = DcmtkPacs(dcmtk("storescp"), work / "pacs" / "received")
    port = free_port()
    config = write_config(work / "node.toml", port=port, var_dir=work / "var", database_url=None, pacs=pacs,
                          weights=args.weights, device=args.device)
    rows: list[Stages] = []
    try:
        with Processes(config, work / "logs", port, workers=1, threads=args.threads):
            database = connect(f"sqlite:///{work / 'var' / 'dicomnode.db'}")
            for study in manifest["studies"]:
                files = [work / "studies" / study["folder"] / item["file"] for item in study["files"]]
                sent_at = time.time()
                storescu(files, port)
                uids = wait_delivered(database, study["study_instance_uid"])
                received = pacs.received()
                at_pacs = max(received[uid].arrived for uid in uids)
                rows.append(stages(database, study["study_instance_uid"], sent_at, at_pacs))
            database.dispose()
    finally:
        pacs.stop()
    totals = np.array([row.total for row in rows])
    print(f"## Latency: camera → results at the PACS, {len(rows)} two-frame studies sent one at a time\n")
    print(f"model {model} on {args.device}; SQLite; poll {POLL_SECONDS} s; torch threads "
          f"{args.threads or 'default'}; {cores()} CPU core(s) available\n")
    print("| stage | p50 s | p95 s | max s |")
    print("|---|---:|---:|---:|")
    for name in ("receive", "assembly", "queue", "processing", "export"):
        values = np.array([getattr(row, name) for row in rows])
        print(f"| {name} | {np.percentile(values, 50):.2f} | {np.percentile(values, 95):.2f} | {values.max():.2f} |")
    p50, p95 = np.percentile(totals, 50), np.percentile(totals, 95)
    print(f"| **camera → results at the PACS** | **{p50:.2f}** | **{p95:.2f}** | {totals.max():.2f} |")
    print(f"\ngoal p95 ≤ 3 s: {'met' if p95 <= 3.0 else 'NOT met'} (p95 {p95:.2f} s)\n")


def throughput_run(args: argparse.Namespace, work: Path, workers: int, url: str,
                   manifest: dict) -> dict:
    pacs = DcmtkPacs(dcmtk("storescp"), work / "pacs" / "received")
    port = free_port()
    config = write_config(work / "node.toml", port=port, var_dir=work / "var", database_url=url, pacs=pacs,
                          weights=args.weights, device=args.device)
    files = [work.parent / "studies" / s["folder"] / f["file"] for s in manifest["studies"] for f in s["files"]]
    try:
        with Processes(config, work / "logs", port, workers=workers, threads=args.threads) as processes:
            database = connect(url)
            started = time.time()
            storescu(files, port)
            uids = set()
            for study in manifest["studies"]:
                uids |= wait_delivered(database, study["study_instance_uid"])
            received = pacs.received()
            seconds = max(received[uid].arrived for uid in uids) - started
            claims = processes.claims()
            with database.session() as session:
                jobs = session.scalars(select(Job)).all()
                job_seconds = [(as_utc(j.finished_at) - as_utc(j.started_at)).total_seconds() for j in jobs]
                per_study = Counter(j.study_id for j in jobs)
                first_attempt = all(j.state is JobState.DONE and j.attempts == 1 for j in jobs)
                results = session.scalar(select(func.count()).select_from(ResultObject))
                exports = session.scalar(select(func.count()).select_from(Export))
                instances = session.scalar(select(func.count()).select_from(Instance))
            database.dispose()
    finally:
        pacs.stop()
    claimed = [job for ids in claims.values() for job in ids]
    pacs_files = sorted(p for p in pacs.directory.iterdir() if p.is_file())
    studies = len(manifest["studies"])
    checks = {
        "one job per study": len(per_study) == studies and set(per_study.values()) == {1},
        "every job done at its first attempt": first_attempt,
        "each job claimed once (logs)": len(claimed) == len(set(claimed)) == len(jobs),
        "results written once": results == exports == RESULTS_PER_STUDY * studies,
        "each result at the PACS once": len(pacs_files) == len(received) == RESULTS_PER_STUDY * studies,
        "every instance stored": instances == len(files),
    }
    return {"workers": workers, "seconds": seconds, "job_seconds": float(np.mean(job_seconds)),
            "per_worker": [len(claims[i]) for i in sorted(claims)], "checks": checks}


def throughput(args: argparse.Namespace, work: Path, model: str) -> bool:
    if not postgres_available():
        print("## Throughput: skipped — no local PostgreSQL server answers (start it as .ci/run does)\n")
        return False
    manifest = write_studies(work / "studies", studies=args.studies, seed=args.seed, layout="multiframe", png=False)
    runs = []
    for workers in args.workers:
        with postgres_database() as url:
            runs.append(throughput_run(args, work / f"w{workers}", workers, url, manifest))
    base = args.studies / runs[0]["seconds"]
    print(f"## Throughput: {args.studies} two-frame studies in one burst, PostgreSQL, serve + (W − 1) workers\n")
    print(f"model {model} on {args.device}; torch threads per process {args.threads or 'default'}; "
          f"{cores()} CPU core(s) available to all processes together (receiver, exporter, PACS included)\n")
    print("| workers | seconds | studies / min | speed-up vs first row | mean job s | jobs per process "
          "| no job ran twice |")
    print("|---:|---:|---:|---:|---:|---|---|")
    ok = True
    for run in runs:
        rate = args.studies / run["seconds"]
        failed = [name for name, passed in run["checks"].items() if not passed]
        ok &= not failed
        print(f"| {run['workers']} | {run['seconds']:.1f} | {60 * rate:.1f} | {rate / base:.2f}× | "
              f"{run['job_seconds']:.2f} | {' / '.join(map(str, run['per_worker']))} | "
              f"{'yes (all 6 checks)' if not failed else 'NO: ' + ', '.join(failed)} |")
    if 4 in args.workers and 1 in args.workers:
        four = next(r for r in runs if r["workers"] == 4)["seconds"]
        one = next(r for r in runs if r["workers"] == 1)["seconds"]
        print(f"\ngoal 4 workers ≥ 3.5× one: {'met' if one / four >= 3.5 else 'NOT met'} ({one / four:.2f}×; "
              f"{cores()} core(s) here)")
    print()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20, help="simulated studies")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--weights", default="default", help='"default", "threshold" or a model path')
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per node process (OMP_NUM_THREADS; default: torch's choice)")
    parser.add_argument("--throughput", action="store_true", help="measure throughput instead of latency")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (throughput)")
    args = parser.parse_args()
    try:
        model = describe_model(args.weights)
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"# dicomnode end to end — {platform.processor() or platform.machine()}, {cores()} CPU core(s) "
          f"available, Python {platform.python_version()}\n")
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as scratch:
        if args.throughput:
            ok = throughput(args, Path(scratch), model)
        else:
            latency(args, Path(scratch), model)
            ok = True
    print(f"load average at the end: {', '.join(f'{value:.1f}' for value in os.getloadavg())} "
          "(other processes on the machine skew every row)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
