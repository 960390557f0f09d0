"""Receive throughput: dcmtk ``storescu`` streaming the same studies into dcmtk ``storescp`` and into our node.

The studies come from the simulator (``dicomnode.synth.write_studies``, 1024 × 256 uint16 by default,
mixed layout: some studies one two-frame instance of ~1 MB, some two single-frame instances of
~0.5 MB). Each run starts a fresh receiver (an empty output folder for storescp; an empty spool and
database for the node, so every file is really stored and indexed, never a duplicate no-op) and
times ``--senders`` concurrent storescu processes sending their share of the files, from the first
process start to the last exit. ``TCP_NODELAY=1`` is set for dcmtk, storescu and storescp alike
(without it each small C-STORE response waits on Nagle's algorithm / delayed ACK, ~40 ms per file
on loopback).

What each receiver does per file: dcmtk storescp writes it (no fsync). The node checks it
(:mod:`dicomnode.dicom.validate`: parse, lengths, pixels decoded, views), writes it with fsync + atomic
rename + directory fsync, and commits the index row (SQLite WAL with synchronous=FULL, or PostgreSQL)
before it answers.

    python benchmarks/receive.py                        # 30 studies, 3 runs, 1 sender
    python benchmarks/receive.py --senders 4 --runs 5
    python benchmarks/receive.py --database-url postgresql+psycopg:///bench?host=/var/run/postgresql

A third row times pynetdicom's transport alone (the node's server and AE settings, a handler that
answers 0x0000 and keeps nothing): the ceiling any pynetdicom-based receiver has on this machine.

Besides wall-clock time each row gives the receiver's CPU time per file (user + system of the
storescp process, or of this process for the in-process node and floor, where storescu runs as
child processes and is not counted): on a shared, loaded machine wall-clock rates swing with the
neighbours while CPU per file barely moves, so before/after comparisons should look at both.

``--stages`` also feeds the same files through the node's C-STORE work without the network (the
calls :meth:`dicomnode.pipeline.receiver.Receiver.handle_store` makes: :meth:`dicomnode.store.spool.Spool.stage`, then
:func:`dicomnode.dicom.validate.inspect_instance` while the spool write runs in the background, then
:func:`dicomnode.store.ingest.ingest`) and prints median CPU and wall milliseconds per file for each. CPU time is
the whole process's, so the background write's system time lands in whichever stage it overlaps.

Output: markdown tables (median and best of the runs) and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.config import NodeConfig  # noqa: E402
from dicomnode.dicom.validate import inspect_instance  # noqa: E402
from dicomnode.pipeline.receiver import Receiver, start_receiver  # noqa: E402
from dicomnode.store.db import connect  # noqa: E402
from dicomnode.store.ingest import ingest  # noqa: E402
from dicomnode.store.models import Instance  # noqa: E402
from dicomnode.store.spool import Spool  # noqa: E402
from tests.peers import StoreSCP, dcmtk, free_port  # noqa: E402

NODE_AE = "DICOMNODE"


@dataclass(frozen=True)
class Run:
    """One timed run of one receiver."""

    seconds: float  # wall clock, first storescu start to last exit
    cpu_seconds: float  # the receiver's user + system CPU time over the same span


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream(port: int, called_ae: str, files: list[Path], senders: int) -> float:
    """Seconds for ``senders`` storescu processes to send ``files`` (round-robin shares)."""
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk reads it (dcmtk/dcmnet/docs: TCP_NODELAY)
    shares = [files[i::senders] for i in range(senders)]
    start = time.perf_counter()
    processes = [
        subprocess.Popen([dcmtk("storescu"), "-aet", "CAMERA", "-aec", called_ae, "127.0.0.1", str(port),
                          *map(str, share)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for share in shares if share
    ]
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - start
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed ({process.returncode}): {output.decode(errors='replace')[-2000:]}")
    return elapsed


def run_dcmtk(files: list[Path], senders: int, work: Path) -> Run:
    with StoreSCP(aet="STORESCP", workdir=work) as peer:
        assert peer.process is not None
        cpu = _process_cpu_seconds(peer.process.pid)
        seconds = stream(peer.port, peer.aet, files, senders)
        cpu = _process_cpu_seconds(peer.process.pid) - cpu
        received = len(peer.files())
    if received != len(files):
        raise RuntimeError(f"storescp kept {received} of {len(files)} files")
    return Run(seconds, cpu)


def stream_in_process(port: int, files: list[Path], senders: int) -> Run:
    """:func:`stream` to a receiver running in this process, with this process's CPU time."""
    cpu = time.process_time()
    seconds = stream(port, NODE_AE, files, senders)
    return Run(seconds, time.process_time() - cpu)


def run_node(files: list[Path], senders: int, work: Path, database_url: str | None) -> Run:
    config = NodeConfig(
        node={"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(), "max_associations": max(senders, 2)},
        storage={"var_dir": str(work / "var"), "min_free_bytes": 0},
        database={"url": database_url} if database_url else {},
    )
    database = connect(config.database_url)
    database.migrate()
    if database_url:  # a shared server database: start from an empty index
        with database.session(write=True) as session:
            session.query(Instance).delete()
    spool = Spool(config.storage.spool_path)
    receiver = start_receiver(config, database, spool)
    try:
        run = stream_in_process(receiver.port, files, senders)
    finally:
        receiver.stop()
        spool.close()
    with database.session() as session:
        indexed = session.query(Instance).count()
    database.dispose()
    if indexed != len(files):
        raise RuntimeError(f"the node indexed {indexed} of {len(files)} files")
    return run


def run_pynetdicom_floor(files: list[Path], senders: int) -> Run:
    """pynetdicom's transport alone: the node's AE settings and server, a handler that only says 0x0000.

    Not a receiver anyone should run (nothing is kept); it shows how much of the node's time per file
    is pynetdicom's polling reactor rather than the node's checks, fsyncs and index.
    """
    config = NodeConfig(node={"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(),
                              "max_associations": max(senders, 2)})
    receiver = Receiver(config, database=None, spool=None)  # type: ignore[arg-type]
    receiver.handle_store = lambda event: 0x0000  # type: ignore[method-assign]
    receiver.start()
    try:
        return stream_in_process(receiver.port, files, senders)
    finally:
        receiver.stop()


def run_stages(files: list[Path], work: Path) -> dict[str, tuple[float, float]]:
    """Median CPU and wall seconds per file spent in validation and in ingest (spool write + index).

    The same calls as :meth:`dicomnode.pipeline.receiver.Receiver.handle_store`, fed from the files on disk (data
    set bytes, transfer syntax and UIDs from their File Meta, as the C-STORE command would carry).
    Medians, because a loaded machine adds rare stalls of tens of milliseconds that swamp a mean.
    """
    from pydicom.filereader import read_file_meta_info

    config = NodeConfig(storage={"var_dir": str(work / "var"), "min_free_bytes": 0})
    database = connect(config.database_url)
    database.migrate()
    spool = Spool(config.storage.spool_path)
    samples: dict[str, list[tuple[float, float]]] = {"validate": [], "ingest": []}
    for path in files:
        data = path.read_bytes()
        meta = read_file_meta_info(path)
        start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, (0002,0000) (PS3.10 7.1)
        clocks = [(time.process_time(), time.perf_counter())]
        with spool.stage(data) as staged:
            instance = inspect_instance(data[start:], transfer_syntax=str(meta.TransferSyntaxUID),
                                        sop_class_uid=str(meta.MediaStorageSOPClassUID),
                                        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID))
            clocks.append((time.process_time(), time.perf_counter()))
            ingest(database, spool, instance, staged, "CAMERA")
        clocks.append((time.process_time(), time.perf_counter()))
        for (name, values), before, after in zip(samples.items(), clocks, clocks[1:]):
            values.append((after[0] - before[0], after[1] - before[1]))
    spool.close()
    database.dispose()
    return {name: (statistics.median(cpu for cpu, _ in values), statistics.median(wall for _, wall in values))
            for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=30, help="simulated studies to stream")
    parser.add_argument("--layout", default="mixed", choices=["multiframe", "split", "mixed"])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per receiver")
    parser.add_argument("--senders", type=int, default=1, help="concurrent storescu processes")
    parser.add_argument("--database-url", default=None, help="node database (default: SQLite in a temp dir)")
    parser.add_argument("--data", type=Path, default=None, help="use the .dcm files under this folder instead")
    parser.add_argument("--stages", action="store_true", help="also time validation and ingest without the network")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ["TCP_NODELAY"] = "1"  # for storescp too: its small C-STORE responses must not wait on Nagle

    with tempfile.TemporaryDirectory(prefix="receive-bench-") as scratch:
        root = Path(scratch)
        if args.data is None:
            from dicomnode.synth import write_studies

            write_studies(root / "studies", studies=args.studies, seed=7, layout=args.layout, png=False)
            data = root / "studies"
        else:
            data = args.data
        files = sorted(data.rglob("*.dcm"))
        if not files:
            raise SystemExit(f"no .dcm files under {data}")
        megabytes = sum(path.stat().st_size for path in files) / 1e6

        runs: dict[str, list[Run]] = {"dcmtk storescp": [], "dicomnode": [], "pynetdicom, 0x0000 only": []}
        load_before = os.getloadavg()[0]
        for run in range(args.runs):  # interleaved, so all see the same machine state
            runs["dcmtk storescp"].append(run_dcmtk(files, args.senders, root / f"dcmtk{run}"))
            runs["dicomnode"].append(run_node(files, args.senders, root / f"node{run}", args.database_url))
            runs["pynetdicom, 0x0000 only"].append(run_pynetdicom_floor(files, args.senders))
            shutil.rmtree(root / f"dcmtk{run}", ignore_errors=True)
            shutil.rmtree(root / f"node{run}", ignore_errors=True)
        stages = run_stages(files, root / "stages") if args.stages else None

    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"# Receive throughput: {len(files)} files ({megabytes:.1f} MB, {args.layout} layout), "
          f"{args.senders} sender(s), {args.runs} runs")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, node database {database}\n")
    print("| receiver | median s | best s | files/s (median) | MB/s (median) | receiver CPU ms/file (median) "
          "| durable |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rates = {}
    for name, results in runs.items():
        median = statistics.median(run.seconds for run in results)
        cpu = statistics.median(run.cpu_seconds for run in results) * 1000 / len(files)
        rates[name] = len(files) / median
        durable = {"dicomnode": "fsync file + dir, index committed", "dcmtk storescp": "written, no fsync"}.get(
            name, "nothing kept (transport floor)")
        print(f"| {name} | {median:.2f} | {min(run.seconds for run in results):.2f} | {rates[name]:.1f} | "
              f"{megabytes / median:.1f} | {cpu:.1f} | {durable} |")
    print(f"\nratio dicomnode / dcmtk (files/s, medians): {rates['dicomnode'] / rates['dcmtk storescp']:.2f}")
    print(f"ratio pynetdicom transport floor / dcmtk: {rates['pynetdicom, 0x0000 only'] / rates['dcmtk storescp']:.2f}")
    if stages is not None:
        print("\n| node stage, no network | CPU ms/file (median) | wall ms/file (median) |\n|---|---:|---:|")
        for name, (cpu, wall) in stages.items():
            print(f"| {name} | {cpu * 1000:.2f} | {wall * 1000:.2f} |")
    print(f"load average (1 min) before: {load_before:.1f}, at the end: "
          f"{', '.join(f'{value:.1f}' for value in os.getloadavg())} (other processes on the machine skew "
          "every wall-clock figure)")


if __name__ == "__main__":
    main()
