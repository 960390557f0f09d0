"""A registered candidate and the active model on the site's held-out studies, at several peak thresholds.

    python benchmarks/site_operating_points.py --config runs/site/node.toml --model 1 --peaks 0.9765 0.999 0.99999

Reads the node's labelled studies as ``dicomnode learn`` does (:mod:`dicomnode.learn.trainset`), the
same held-out patients, and prints lesion sensitivity, false positives per study and study AUC of the
configured ``[model] weights`` and of registry model ``--model`` at each ``--peaks`` value (the card's
operating point otherwise unchanged): where the candidate stands against the active model's
false-positive rate when the gate refuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dicomnode.config import load_config
from dicomnode.learn.gate import study_score
from dicomnode.train.bootstrap import measures
from dicomnode.learn.registry import card_path, list_models
from dicomnode.learn.trainset import label_refs, site_studies, split_site
from dicomnode.pipeline.models import PLANAR, NodeModels, load_registry_model
from dicomnode.store.db import connect
from dicomnode.store.spool import Spool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--model", type=int, required=True, help="registry id of the candidate")
    parser.add_argument("--peaks", type=float, nargs="+", default=[0.9765, 0.999, 0.99999])
    args = parser.parse_args()
    config = load_config(args.config)
    database = connect(config.database_url, create=False)
    with Spool(config.storage.spool_path) as spool:
        studies = site_studies(database, spool, label_refs(database, reviewed_results_count=config.learn.reviewed_results_count))
    held_out = split_site(studies, config.learn.held_out_percent)[1]
    row = next(m for m in list_models(database) if m.id == args.model)
    rows = [("configured " + config.model.weights, "card", NodeModels(config.model).get(PLANAR))]
    candidate = load_registry_model(card_path(config.storage.var_dir, row), config.model)
    for peak in args.peaks:
        point = dataclasses.replace(candidate.card.operating_point, peak_threshold=peak)
        segmenter = load_registry_model(card_path(config.storage.var_dir, row), config.model)
        segmenter.card = dataclasses.replace(segmenter.card, operating_point=point)
        rows.append((row.version, f"{peak:g}", segmenter))
    print(f"held-out: {len(held_out)} studies, {sum(int(m.sum() > 0) for s in held_out for m in s.labels.values())} views with lesions")
    print(f"{'model':<42}{'peak':>9}{'sensitivity':>13}{'FP/study':>10}{'AUC':>7}")
    for name, peak, segmenter in rows:
        found = measures([study_score(segmenter, s) for s in held_out])
        print(f"{name:<42}{peak:>9}{found['lesion_sensitivity']:>13.3f}{found['false_positives_per_study']:>10.2f}"
              f"{found['study_auc']:>7.3f}")
    database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
