"""Inference cost of each segmentation network per study: parameters, FLOPs, CPU and GPU time.

A *study* is both whole-body views at 1024 × 256 (docs/segmentation.md), run the way inference runs them:
fully convolutional networks take each whole view in one pass (a batch of 2); a network with a fixed
window (``net.window``) takes 256 × 256 windows at stride 128, 7 per view (a batch of 14; paper 002,
"Data preprocessing" Step 4). FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`
(2 per multiply–add). CPU time: median of ``--repeats`` runs after warm-up, ``torch.inference_mode``,
channels-last, float32, ``--threads`` intra-op threads. GPU time (when ``torch.cuda.is_available()``):
the same with bfloat16 autocast, synchronised.

    python benchmarks/inference.py                    # all networks, slim and paper widths
    python benchmarks/inference.py --widths slim      # the quick table (well under a minute on 2 cores)

Output: a markdown table on stdout. On a 2-core CPU the slim widths take under a minute with the
defaults (about 2 minutes with ``--repeats 5 --warmup 2`` on a busy machine); the papers' widths
need 10–60 s *per study* per network, so ``--widths paper --repeats 1 --warmup 0`` alone takes
4–6 minutes, and the defaults (1 warm-up + 3 timed runs) about 15–20. Set ``--threads`` to the
cores that are actually free: on a 2-core machine shared with other work, 2 threads were 2–4×
slower than 1.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from dicomnode.segmentation.networks import SegmentationNetwork, available, build

VIEW_ROWS, VIEW_COLUMNS = 1024, 256
VIEWS_PER_STUDY = 2
STRIDE = 128


def study_batch(net: SegmentationNetwork) -> torch.Tensor:
    """The input one study makes for ``net``: two whole views, or their 256×256 windows."""
    views = torch.rand(VIEWS_PER_STUDY, net.in_channels, VIEW_ROWS, VIEW_COLUMNS)
    if net.window is None:
        return views
    w = net.window
    windows = views.unfold(2, w, STRIDE).unfold(3, w, STRIDE)  # (V, C, nr, nc, w, w)
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, net.in_channels, w, w).contiguous()


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of PyTorch's CPU flash attention, which FlopCounterMode has no formula for."""
    return sdpa_flop_count(query, key, value)


def count_flops(net: SegmentationNetwork, batch: torch.Tensor) -> int:
    """FLOPs of one forward pass, attention included.

    FlopCounterMode sees neither the fused transformer-encoder kernel used in eval mode nor CPU
    flash attention, so the fused path is switched off while counting and the CPU attention op is
    given the formula of the other attention kernels.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(
            display=False,
            custom_mapping={
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops
            },
        )
        with counter, torch.inference_mode():
            net(batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def median_ms(run: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``run`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(name: str, width: str, repeats: int, warmup: int) -> dict[str, object]:
    """One table row for network ``name`` at ``width``."""
    net = build(name, width=width).eval()
    batch = study_batch(net)
    row: dict[str, object] = {
        "network": name,
        "width": width,
        "params (M)": sum(p.numel() for p in net.parameters()) / 1e6,
        "input": f"{batch.shape[0]}×{batch.shape[2]}×{batch.shape[3]}",
    }
    row["GFLOP/study"] = count_flops(net, batch) / 1e9
    with torch.inference_mode():
        net = net.to(memory_format=torch.channels_last)
        cpu_batch = batch.to(memory_format=torch.channels_last)
        row["CPU ms/study"] = median_ms(lambda: net(cpu_batch), repeats, warmup, lambda: None)
        if torch.cuda.is_available():
            gpu_net = net.cuda()
            gpu_batch = cpu_batch.cuda()

            def on_gpu() -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return gpu_net(gpu_batch)

            row["GPU ms/study"] = median_ms(on_gpu, repeats, warmup, torch.cuda.synchronize)
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    """Rows as a markdown table (floats with 3 significant digits or 1 decimal)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if value >= 100 else f"{value:.3g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def shipped_default(repeats: int, warmup: int) -> dict[str, object]:
    """The shipped default model through the node's own path: ``Segmenter.default().segment`` on a
    simulated 1024 × 256 study (preprocessing, the network with the card's test-time flip, mapping
    back, the operating point), median wall-clock ms per study; then the same with the anatomy map and
    the second stage read on top (:mod:`dicomnode.segmentation.reading`), as the worker runs it."""
    from dicomnode.synth.dicom import StudyIdentity, nm_dataset
    from dicomnode.synth.simulate import simulate_study
    from dicomnode.segmentation.inference import Segmenter
    from dicomnode.segmentation.scan import View
    from dicomnode.segmentation.views import load_scan

    study = simulate_study(7)
    scan = load_scan([nm_dataset(study, StudyIdentity(seed=7, index=1), (View.ANTERIOR, View.POSTERIOR), 1)])
    from dicomnode.segmentation.reading import AnatomyReader

    segmenter = Segmenter.default()
    reader = AnatomyReader.default()

    def timed() -> float:
        for _ in range(warmup):
            segmenter.segment(scan)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            segmenter.segment(scan)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    alone = timed()
    segmenter.reader = reader  # as the worker runs it (dicomnode.pipeline.models.load_segmenter)
    read = timed() if reader is not None else float("nan")
    card = segmenter.card
    return {"network": f"default ({card.version})", "width": card.width,
            "in channels": card.in_channels, "test-time flip": card.operating_point.test_time_flip,
            "CPU ms / study (Segmenter)": alone,
            "CPU ms / study (+ anatomy map and second stage)": read}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=available(), choices=available())
    parser.add_argument("--widths", nargs="+", default=["slim", "paper"], choices=["slim", "paper"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per network (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads")
    parser.add_argument("--default-only", action="store_true",
                        help="only the shipped default through the node's Segmenter path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be ≥ 1, --warmup ≥ 0")
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"torch {torch.__version__}, CPU {platform.processor() or platform.machine()} with "
        f"{args.threads} thread(s), GPU {gpu}; study = {VIEWS_PER_STUDY} views of "
        f"{VIEW_ROWS}×{VIEW_COLUMNS}; median of {args.repeats} after {args.warmup} warm-up\n"
    )
    start = time.perf_counter()
    rows = [] if args.default_only else [
        measure(name, width, args.repeats, args.warmup)
        for width in args.widths
        for name in args.networks
    ]
    if rows:
        print(markdown(rows) + "\n")
    print(markdown([shipped_default(args.repeats, args.warmup)]))
    print(f"\n(measured in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
