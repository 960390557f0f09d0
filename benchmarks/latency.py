"""End-to-end latency of the node: camera C-STORE acknowledged → every result object at the PACS.

Runs ``dicomnode serve`` as a real process (model from ``--weights``, CPU unless ``--device``),
dcmtk ``storescu`` as the camera (one association per study, ``--interval`` seconds apart) and dcmtk
``storescp`` as the PACS, on simulated studies (``dicomnode.synth``). For each study it records when
storescu finished (the acknowledgement) and when the last of its result objects appeared at the PACS
(a SEG per view, GSPS, SR, SC), and prints a table: per-study latency (median, 90th percentile,
maximum) and the sustained rate. The quiet period plays no part: every study has both views, so it
is ready the moment it is complete.

    python benchmarks/latency.py --studies 10 --interval 0.5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402

from dicomnode.synth import write_studies  # noqa: E402
from tests.peers import StoreSCP, free_port  # noqa: E402
from tests.processing_helpers import NodeProcess, storescu, write_node_config  # noqa: E402


def arrivals(pacs: StoreSCP, seen: dict[Path, tuple[str, float]]) -> None:
    """Note the study and arrival time of every new complete file at the PACS."""
    for path in pacs.files():
        if path in seen:
            continue
        try:
            study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        except Exception:  # still being written
            continue
        seen[path] = (study, time.monotonic())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between studies")
    parser.add_argument("--weights", default="threshold")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="latency-"))
    manifest = write_studies(work / "studies", studies=args.studies, seed=args.seed, layout="mixed", png=False)
    expected = {s["study_instance_uid"]: sum(len(f["frames"]) for f in s["files"]) + 3 for s in manifest["studies"]}
    pacs = StoreSCP(workdir=work / "pacs")
    port = free_port()
    config = write_node_config(work / "node.toml", var_dir=work / "var", port=port,
                               destinations=[("PACS", pacs.port, pacs.aet)], quiet_seconds=10)
    text = config.read_text().replace('weights = "threshold"', f'weights = "{args.weights}"')
    config.write_text(text.replace('device = "cpu"', f'device = "{args.device}"'))
    acked: dict[str, float] = {}
    seen: dict[Path, tuple[str, float]] = {}
    with pacs, NodeProcess(config, work / "node.log", port=port):
        start = time.monotonic()
        for study in manifest["studies"]:
            files = [work / "studies" / study["folder"] / f["file"] for f in study["files"]]
            if storescu(files, port).returncode != 0:
                raise SystemExit(f"storescu failed for {study['folder']}; see {work / 'node.log'}")
            acked[study["study_instance_uid"]] = time.monotonic()
            arrivals(pacs, seen)
            time.sleep(args.interval)
        deadline = time.monotonic() + 60 + 30 * args.studies
        while time.monotonic() < deadline:
            arrivals(pacs, seen)
            counts: dict[str, int] = {}
            for study, _ in seen.values():
                counts[study] = counts.get(study, 0) + 1
            if all(counts.get(uid, 0) >= n for uid, n in expected.items()):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"not every result arrived; see {work / 'node.log'}")
        end = time.monotonic()
    done = {uid: max(t for study, t in seen.values() if study == uid) for uid in expected}
    latency = sorted(done[uid] - acked[uid] for uid in expected)
    p90 = latency[min(len(latency) - 1, int(round(0.9 * (len(latency) - 1))))]
    print(f"\nnode latency: {platform.node()}, {os.cpu_count()} CPUs, weights {args.weights} on {args.device}, "
          f"{args.studies} studies {args.interval} s apart\n")
    print("| studies | objects | median s | p90 s | max s | studies/min |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(latency)} | {len(seen)} | {statistics.median(latency):.2f} | {p90:.2f} | {latency[-1]:.2f} | "
          f"{60 * len(latency) / (end - start):.1f} |")


if __name__ == "__main__":
    main()
