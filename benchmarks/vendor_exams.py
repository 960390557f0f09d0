"""Whole vendor exams through a node: what is accepted, what is processed, which results come back.

For each vendor profile of ``dicomnode synth --vendor`` (``dicomnode/synth/vendors.py``) one whole exam
(Siemens with two whole-body phases) is simulated and sent by C-STORE (one association per exam, calling
AE ``CAMERA``) to a node running in this process with the built-in defaults (the node of
``dicomnode demo``), whose one destination is a PACS on this machine (dcmtk ``storescp``). When every
job is done and every result is at the PACS, the table says per vendor and per instance kind: how many
instances were sent, how many were answered 0x0000, how many were segmented (referenced by a SEG at the
PACS: the whole-body scans and, SPECT-only, the RECON TOMO volumes), and the result objects the PACS
holds for the exam (on the whole-body row).

    python benchmarks/vendor_exams.py                    # shipped model
    python benchmarks/vendor_exams.py --weights threshold
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pydicom

from dicomnode.dicom.peers import Destination
from dicomnode.dicom.scu import send_files
from dicomnode.ops.service import Node
from dicomnode.synth import write_studies
from dicomnode.synth.vendors import VENDORS
from dicomnode.tools.demo import node_config
from dicomnode.tools.harness import delivered_results, free_port, start_pacs

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
KINDS = {SEG: "SEG", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS", "1.2.840.10008.5.1.4.1.1.88.33": "SR",
         "1.2.840.10008.5.1.4.1.1.88.34": "3D SR", "1.2.840.10008.5.1.4.1.1.7": "SC"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="default")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vendor-exams-"))
    exams = {}
    for seed, vendor in enumerate(VENDORS, start=500):
        manifest = write_studies(work / vendor, studies=1, seed=seed, layout="multiframe", png=False,
                                 vendor=vendor, phases=2 if vendor == "siemens" else 1)
        (study,) = manifest["studies"]
        exams[vendor] = (study["study_instance_uid"],
                         [(work / vendor / study["folder"] / f["file"], f["kind"]) for f in study["files"]])
    pacs = start_pacs(work / "pacs", "dcmtk")
    port = free_port()
    node = Node(node_config(work, port, pacs, args.weights, "cpu"))
    node.start()
    try:
        peer = Destination(name="node", host="127.0.0.1", port=port, ae_title=node.config.node.ae_title)
        answers: dict[Path, bool] = {}
        for _, files in exams.values():
            for result in send_files([path for path, _ in files], peer, calling_ae="CAMERA"):
                answers[Path(result.path)] = result.ok and result.status == 0x0000
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            states = [delivered_results(node.database, uid) for uid, _ in exams.values()]
            if all(finished for finished, _, _ in states):
                break
            time.sleep(0.5)
        else:
            print("timed out waiting for the results", file=sys.stderr)
            return 1
        errors = [error for _, error, _ in states if error]
        if errors:
            print(f"not every exam got results: {errors}", file=sys.stderr)
            return 1
        received = [pydicom.dcmread(item.path) for item in pacs.received().values()]
    finally:
        node.stop()
        pacs.stop()
    rows = []
    for vendor, (study_uid, files) in exams.items():
        objects = [ds for ds in received if ds.StudyInstanceUID == study_uid]
        segmented = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                     for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        results = Counter(KINDS.get(str(ds.SOPClassUID), str(ds.SOPClassUID)) for ds in objects)
        by_kind: dict[str, list[Path]] = {}
        for path, kind in files:
            by_kind.setdefault(kind, []).append(path)
        for kind, paths in by_kind.items():
            uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}
            shown = ", ".join(f"{n} {k}" for k, n in sorted(results.items())) if kind == "whole-body" else "-"
            rows.append((vendor, kind, len(paths), sum(answers[path] for path in paths), len(uids & segmented), shown))
    header = ("vendor", "instance kind", "sent", "0x0000", "segmented", "results at the PACS")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(" | ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
