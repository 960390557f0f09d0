"""Whole vendor exams through a node: what is accepted, what is processed, which results come back.

For each vendor profile of ``dicomnode synth --vendor`` (``dicomnode/synth/vendors.py``) one whole exam
(Siemens with two whole-body phases) is simulated and sent by C-STORE (one association per exam, calling
AE ``CAMERA``) to a node running in this process with the built-in defaults (the node of
``dicomnode demo``), whose one destination is a PACS on this machine (dcmtk ``storescp``). When every
job is done and every result is at the PACS, the table says per vendor and per instance kind: how many
instances were sent, how many were answered 0x0000, how many were segmented (referenced by a SEG at the
PACS: the whole-body scans and, SPECT-only, the RECON TOMO volumes), and the result objects the PACS
holds for the exam (on the exam's first row), or why it is not processable.

Three exams rebuilt after what a real Siemens Symbia exam set did to the node (issue "Every real exam
handled right"): ``sestamibi`` (the Siemens exam restated as a parathyroid MIBI study: its TOMO states
Sestamibi, its other instances no agent: not a bone scan, nothing sent), ``spect-ct+dose`` (a SPECT/CT
exam with the CT's X-Ray Radiation Dose SR in the middle of the CT series: all stored, the SPECT/CT
segmented) and ``re-recon`` (a SPECT reconstruction and a later reconstruction of the same
acquisition, same description: only the later is segmented, its SR says it supersedes the earlier).
The node is the demo's, with ``[model] unvalidated_results`` on (the SPECT models record no
validation on real scans).

    python benchmarks/vendor_exams.py                    # shipped model
    python benchmarks/vendor_exams.py --weights threshold
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from dicomnode.dicom.peers import Destination
from dicomnode.dicom.scu import send_files
from dicomnode.ops.service import Node
from dicomnode.synth import write_studies
from dicomnode.synth.other_tracers import as_sestamibi
from dicomnode.synth.spectct import write_exams
from dicomnode.synth.spectct.dicom import dose_report
from dicomnode.synth.vendors import VENDORS
from dicomnode.tools.demo import node_config
from dicomnode.tools.harness import delivered_results, free_port, start_pacs

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
KINDS = {SEG: "SEG", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS", "1.2.840.10008.5.1.4.1.1.88.33": "SR",
         "1.2.840.10008.5.1.4.1.1.88.34": "3D SR", "1.2.840.10008.5.1.4.1.1.7": "SC"}
Exam = tuple[str, list[tuple[Path, str]]]  # Study Instance UID, (file, instance kind) in sending order


def sestamibi_exam(work: Path) -> Exam:
    """The Siemens exam as a parathyroid sestamibi study (module docstring)."""
    manifest = write_studies(work / "mibi", studies=1, seed=520, layout="multiframe", png=False, vendor="siemens")
    (study,) = manifest["studies"]
    files = []
    for entry in study["files"]:
        path = work / "mibi" / study["folder"] / entry["file"]
        ds = pydicom.dcmread(path)
        as_sestamibi(ds, entry["kind"])
        ds.save_as(path, enforce_file_format=True)
        files.append((path, entry["kind"]))
    return study["study_instance_uid"], files


def spect_exams(work: Path) -> tuple[Exam, Exam]:
    """A SPECT/CT exam with a dose report amid its CT, and a SPECT reconstruction made twice."""
    manifest = write_exams(work / "spect", exams=2, seed=521, size="tiny")
    hybrid, other = manifest["exams"]
    folder = work / "spect" / hybrid["folder"]
    cts = sorted(folder.glob("ct/*.dcm"))
    dose = folder / "dose.dcm"
    dose_report(pydicom.dcmread(cts[0], stop_before_pixels=True)).save_as(dose, enforce_file_format=True)
    middle = len(cts) // 2
    hybrid_files = ([(p, "ct") for p in cts[:middle]] + [(dose, "dose-report")] + [(p, "ct") for p in cts[middle:]]
                    + [(folder / "spect.dcm", "recon-tomo")])
    first = work / "spect" / other["folder"] / "spect.dcm"
    again = copy.deepcopy(pydicom.dcmread(first))
    again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    again.SeriesInstanceUID, again.ContentDate, again.SeriesDate = generate_uid(), "20991231", "20991231"
    later = first.with_name("spect-reconstructed-again.dcm")
    again.save_as(later, enforce_file_format=True)
    return ((hybrid["study_instance_uid"], hybrid_files),
            (other["study_instance_uid"], [(first, "recon-tomo (earlier)"), (later, "recon-tomo (later)")]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="default")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vendor-exams-"))
    exams: dict[str, Exam] = {}
    for seed, vendor in enumerate(VENDORS, start=500):
        manifest = write_studies(work / vendor, studies=1, seed=seed, layout="multiframe", png=False,
                                 vendor=vendor, phases=2 if vendor == "siemens" else 1)
        (study,) = manifest["studies"]
        exams[vendor] = (study["study_instance_uid"],
                         [(work / vendor / study["folder"] / f["file"], f["kind"]) for f in study["files"]])
    exams["sestamibi"] = sestamibi_exam(work)
    exams["spect-ct+dose"], exams["re-recon"] = spect_exams(work)
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
        outcomes = {name: error for name, (_, error, _) in zip(exams, states, strict=True)}
        errors = [f"{name}: {error}" for name, error in outcomes.items() if error and name != "sestamibi"]
        if errors or not (outcomes["sestamibi"] or "").startswith("not processable"):
            print(f"not every exam was handled as expected: {errors or outcomes['sestamibi']}", file=sys.stderr)
            return 1
        sr_notes = _sr_notes([item.path for item in pacs.received().values()])
        received = [pydicom.dcmread(item.path) for item in pacs.received().values()]
    finally:
        node.stop()
        pacs.stop()
    rows = []
    for vendor, (study_uid, files) in exams.items():
        first_row = True
        objects = [ds for ds in received if ds.StudyInstanceUID == study_uid]
        segmented = {str(item.ReferencedSOPInstanceUID) for ds in objects if ds.SOPClassUID == SEG
                     for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        results = Counter(KINDS.get(str(ds.SOPClassUID), str(ds.SOPClassUID)) for ds in objects)
        by_kind: dict[str, list[Path]] = {}
        for path, kind in files:
            by_kind.setdefault(kind, []).append(path)
        for kind, paths in by_kind.items():
            uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}
            shown = "-"
            if first_row:
                shown = (", ".join(f"{n} {k}" for k, n in sorted(results.items()))
                         or _once(outcomes[vendor] or "none"))
                notes = sr_notes.get(study_uid, [])
                shown += "".join(f"; SR: {note}" for note in notes)
                first_row = False
            rows.append((vendor, kind, len(paths), sum(answers[path] for path in paths), len(uids & segmented), shown))
    header = ("exam", "instance kind", "sent", "0x0000", "segmented", "results at the PACS")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(" | ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)))
    return 0


def _once(outcome: str) -> str:
    """``not processable: A; A; B`` → ``not processable: A; B`` (one reason per acquisition)."""
    prefix = "not processable: "
    reasons = outcome.removeprefix(prefix).split("; ")
    return (prefix if outcome.startswith(prefix) else "") + "; ".join(dict.fromkeys(reasons))


def _sr_notes(paths: list) -> dict[str, list[str]]:
    """Per study, what the SRs say of a superseded reconstruction and of an unvalidated model (short)."""
    notes: dict[str, list[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.Modality != "SR":
            continue
        text = " ".join(str(item.TextValue) for item in ds.ContentSequence[-1].ContentSequence if "TextValue" in item)
        for marker in ("supersedes the earlier reconstruction", "not validated on real scans"):
            if marker in text and marker not in notes.get(str(ds.StudyInstanceUID), []):
                notes.setdefault(str(ds.StudyInstanceUID), []).append(marker)
    return notes


if __name__ == "__main__":
    sys.exit(main())
