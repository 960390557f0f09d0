"""The learning loop on a simulated site, end to end: the before/after table and the gate's report.

    nice -n 10 python benchmarks/site_learning.py runs/site --studies 40 --seed 26 [--weights threshold] \
        [--population adolescent]

``N`` simulated studies go through ``dicomnode serve`` (the shipped default model reads them); a
reader corrects every result that needs it (:mod:`dicomnode.tools.site`) and stores the SEGs back by
dcmtk ``storescu``; ``dicomnode learn`` trains a candidate and gates it on the site's held-out
patients; then the negative control (``--shuffled-labels``), one more study (which model reads it),
``dicomnode models rollback``, and one more study again. Prints the gate's tables and a summary;
writes ``OUT/report.json``. Everything stays under OUT (the work folder, outside the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dicomnode.tools.site import Site, correct, dicomnode, learn, simulate


def _table(report: dict) -> str:
    gate = report["gate"]
    lines = [f"{'measure':<28}{'active':>9}{'candidate':>11}{'difference':>12}  95% CI (patient bootstrap)"]
    for measure, diff in gate["difference"].items():
        def show(value) -> str:
            return "n/a" if value is None else f"{value:.3f}"
        lines.append(f"{measure:<28}{show(gate['active'][measure]):>9}{show(gate['candidate'][measure]):>11}"
                     f"{'n/a' if diff['point'] is None else format(diff['point'], '+.3f'):>12}  "
                     f"[{diff['low'] if diff['low'] is None else format(diff['low'], '+.3f')}, "
                     f"{diff['high'] if diff['high'] is None else format(diff['high'], '+.3f')}]")
    lines.append(f"held-out: {gate['studies']} studies, {gate['patients']} patients; "
                 f"gate {'PASSED' if gate['passed'] else 'REFUSED: ' + '; '.join(gate['reasons'])}; "
                 f"activated: {report['activated']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--epochs", type=int, default=None, help="override the site preset's epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=3, help="[learn] folds: patient folds of the training studies")
    parser.add_argument("--population", default="adult",
                        help="who the site scans: adult or adolescent (open growth plates; dicomnode/synth/patient.py)")
    parser.add_argument("--weights", default="default",
                        help="the site's [model] weights before learning: default (shipped) or threshold (the baseline)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    entries = simulate(args.out / "synth", args.studies + 2, args.seed, args.population)
    site_entries, later = entries[:args.studies], entries[args.studies:]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    with Site(args.out, threads=args.threads, weights=args.weights, folds=args.folds) as site:
        uids = [e["study_instance_uid"] for e in site_entries]
        site.send([p for e in site_entries for p in sorted((args.out / "synth" / e["folder"]).glob("*.dcm"))])
        site.wait("the site's studies processed", lambda: site.processed(uids))
        timings["serve"] = time.perf_counter() - started
        files, edits = correct(site, args.out / "synth", site_entries, args.out / "corrections")
        site.send(files)
        site.wait("the corrections examined", lambda: site.labels() >= len(files))
        mark = time.perf_counter()
        report = learn(site, *epochs)
        timings["learn"] = time.perf_counter() - mark
        mark = time.perf_counter()
        control = learn(site, "--shuffled-labels", *epochs)
        timings["learn_shuffled"] = time.perf_counter() - mark

        def read_next(entry: dict) -> set[str]:
            site.send(sorted((args.out / "synth" / entry["folder"]).glob("*.dcm")))
            site.wait("the next study processed", lambda: site.processed([entry["study_instance_uid"]]))
            return site.ai_masks(entry["study_instance_uid"])[1]

        after_learn = read_next(later[0])
        dicomnode("models", "rollback", "--config", str(site.config), "--by", "benchmark", log=args.out / "cli.log")
        after_rollback = read_next(later[1])
        listing = dicomnode("models", "--config", str(site.config), log=args.out / "cli.log").stdout.decode()
    summary = {"studies": args.studies, "population": args.population, "corrections_sent": len(files), "edits": vars(edits), "learn": report,
               "shuffled_control": control, "next_study_read_by": sorted(after_learn),
               "after_rollback_read_by": sorted(after_rollback), "seconds": {k: round(v, 1) for k, v in timings.items()}}
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"simulated site: {args.studies} {args.population} studies (seed {args.seed}), {len(files)} correction SEGs stored back "
          f"(edits: {edits.added} added, {edits.removed} removed, {edits.redrawn} redrawn)")
    print(f"\nlearn: candidate {report['candidate']['version']} against {report['active']['version']}")
    print(_table(report))
    print(f"\nnegative control (--shuffled-labels): candidate {control['candidate']['version']}")
    print(_table(control))
    print(f"\nnext study read by: {', '.join(sorted(after_learn))}")
    print(f"after rollback read by: {', '.join(sorted(after_rollback))}")
    print("\n" + listing)
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
