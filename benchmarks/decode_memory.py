"""Peak memory of the node under concurrent senders of the largest instances it accepts (issue 28).

The largest accepted instance is a Deflated Explicit VR Little Endian NM static (stored, never
segmented, so the worker does not add its own memory) whose Pixel Data inflates to just under half
``[limits] decoded_bytes_per_instance`` (the budget holds inflated bytes twice, :mod:`dicomnode.dicom.budget`): a few hundred KiB on the wire. ``--senders`` associations
send it at once (pynetdicom's chunked send, the bytes unchanged: ``tests/malformed_corpus.send_raw``),
each sending it again after a 0xA700 until it is stored or ``--tries`` are spent. The node is
``dicomnode serve`` (SQLite, the threshold model, no destination); its peak RSS is the kernel's
high-water mark (``VmHWM`` in ``/proc/PID/status``), its RSS before the senders start ``VmRSS``.

    nice -n 10 python benchmarks/decode_memory.py                      # the defaults: 256 MiB / 1 GiB
    nice -n 10 python benchmarks/decode_memory.py --per-node-mib 65536   # no node budget
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import DeflatedExplicitVRLittleEndian  # noqa: E402

from dicomnode.tools.harness import free_port  # noqa: E402
from tests.malformed_corpus import Sample, one, sample  # noqa: E402
from tests.processing_helpers import NodeProcess  # noqa: E402

MIB = 1 << 20


def largest_instance(inflated_mib: int) -> Sample:
    """An NM static whose deflated data set inflates to about ``inflated_mib`` MiB (zero pixels)."""
    ds = one()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    frames = 2
    side = int((inflated_mib * MIB / (frames * 2)) ** 0.5) // 2 * 2
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * frames * 2)
    native = sample(ds).body  # explicit VR little endian
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(native) + deflater.flush()
    return Sample(str(ds.SOPClassUID), str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian, body), len(native)


def _memory(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run(args: argparse.Namespace) -> None:
    from tests.malformed_corpus import send_raw

    item, inflated = largest_instance(args.inflated_mib)
    with tempfile.TemporaryDirectory(prefix="dicomnode-decode-memory-") as scratch:
        work = Path(scratch)
        port = free_port()
        config = work / "node.toml"
        config.write_text("\n".join([
            "[node]", f"port = {port}", 'host = "127.0.0.1"', f"max_associations = {args.senders + 10}",
            "[storage]", f'var_dir = "{work / "var"}"', "min_free_bytes = 0",
            "[model]", 'weights = "threshold"', 'device = "cpu"',
            "[limits]", f"decoded_bytes_per_instance = {args.per_instance_mib * MIB}",
            f"decoded_bytes_per_node = {args.per_node_mib * MIB}",
        ]) + "\n")
        node = NodeProcess(config, work / "node.log", port=port)
        node.start()
        try:
            time.sleep(2)
            before, _ = _memory(node.process.pid)

            def sender(index: int) -> tuple[int, int]:
                refusals = 0
                for _ in range(args.tries):
                    try:
                        answer = send_raw(port, "DICOMNODE", item, work / f"wire-{index}")
                    except AssertionError:  # no association (a transient rejection): try again
                        time.sleep(0.5)
                        continue
                    if answer.status == 0x0000:
                        return 1, refusals
                    refusals += 1
                    time.sleep(0.5)
                return 0, refusals

            started = time.monotonic()
            with ThreadPoolExecutor(args.senders) as pool:
                outcomes = list(pool.map(sender, range(args.senders)))
            seconds = time.monotonic() - started
            _, peak = _memory(node.process.pid)
        finally:
            node.kill()
    stored = sum(o[0] for o in outcomes)
    refused = sum(o[1] for o in outcomes)
    print(f"decode memory: {platform.node()}, {os.cpu_count()} CPUs; instance {len(item.body) / 1024:.0f} KiB deflated, "
          f"{inflated / MIB:.0f} MiB inflated; budget {args.per_instance_mib} MiB per instance, "
          f"{args.per_node_mib} MiB per node")
    print("| senders | stored | 0xA700 answers (retried) | seconds | node RSS before MiB | node peak RSS MiB | peak − before MiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.senders} | {stored} | {refused} | {seconds:.1f} | {before:.0f} | {peak:.0f} | {peak - before:.0f} |")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--inflated-mib", type=int, default=120,
                   help="the instance's inflated size (just under the budget, which holds it twice)")
    p.add_argument("--per-instance-mib", type=int, default=256, help="[limits] decoded_bytes_per_instance in MiB")
    p.add_argument("--per-node-mib", type=int, default=1024, help="[limits] decoded_bytes_per_node in MiB")
    p.add_argument("--tries", type=int, default=60, help="sends per sender until it is stored")
    return p


if __name__ == "__main__":
    run(parser().parse_args())
