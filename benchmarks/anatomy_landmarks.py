"""The anatomy map on real whole-body scans: pictures for a person to look at, and a landmark hit rate.

    python benchmarks/anatomy_landmarks.py DATA --sheets runs/landmarks/sheets     # to annotate by eye
    python benchmarks/anatomy_landmarks.py DATA --pictures runs/anatomy/real       # the map, coloured
    python benchmarks/anatomy_landmarks.py DATA --landmarks /work/landmarks/bs80k-dev.json

``DATA`` is a BS-80K whole-body folder (``<id>/<id>_<date>.dcm``, :mod:`dicomnode.train.bs80k`). Pictures and
landmarks derive from the images pixel by pixel, so they are written outside the repository (or
under the ignored ``runs/``), never committed.

Landmarks file: ``{"<study key>": {"<landmark>": [row, column], ...}, ...}`` in canonical source
pixels (row 0 cranial, column 0 the patient's right: the anterior view as stored, the posterior
un-mirrored), landmarks ``bladder``, ``left kidney``, ``right kidney``, ``left knee``, ``right knee``,
``left iliac crest``, ``right iliac crest``, ``chin``. A landmark is **hit** when, within
``--radius`` source pixels of it, the map of the view that shows it best (kidneys: posterior; the
rest: anterior) holds its label (knees: both femur and lower leg, the joint between them; iliac
crest: pelvis; chin: facial bones) and, for a sided landmark, the map's midline puts it on its side.
Prints a table: hits / annotated per landmark, and in total.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.segmentation.anatomy import AnatomyLabel, ViewAnatomy
from dicomnode.segmentation.anatomymap import AnatomyMapper
from dicomnode.segmentation.scan import BoneScan, View

LANDMARKS: dict[str, tuple[View, tuple[AnatomyLabel, ...]]] = {
    "bladder": (View.ANTERIOR, (AnatomyLabel.BLADDER,)),
    "left kidney": (View.POSTERIOR, (AnatomyLabel.KIDNEYS,)),
    "right kidney": (View.POSTERIOR, (AnatomyLabel.KIDNEYS,)),
    "left knee": (View.ANTERIOR, (AnatomyLabel.FEMORA, AnatomyLabel.LOWER_LEGS_AND_FEET)),
    "right knee": (View.ANTERIOR, (AnatomyLabel.FEMORA, AnatomyLabel.LOWER_LEGS_AND_FEET)),
    "left iliac crest": (View.ANTERIOR, (AnatomyLabel.PELVIS,)),
    "right iliac crest": (View.ANTERIOR, (AnatomyLabel.PELVIS,)),
    "chin": (View.ANTERIOR, (AnatomyLabel.FACIAL_BONES,)),
}
PALETTE = np.array([
    (0, 0, 0), (70, 70, 70), (160, 200, 140), (240, 200, 0), (240, 0, 160), (40, 220, 140), (80, 110, 20),
    (230, 120, 200), (160, 90, 250), (250, 170, 150), (0, 200, 240), (210, 140, 60), (120, 240, 250),
    (110, 160, 90), (160, 60, 80), (240, 60, 170), (40, 210, 200), (60, 230, 30), (100, 40, 120)], np.uint8)


def studies(folder: Path) -> list[tuple[str, BoneScan]]:
    from dicomnode.train.bs80k import read_wholebody

    return [(path.stem, read_wholebody(path)) for path in sorted(folder.glob("*/*.dcm"))]


def grey(counts: np.ndarray) -> np.ndarray:
    top = float(np.percentile(counts, 99.5)) or 1.0
    return (255 * np.clip(counts / top, 0, 1)).astype(np.uint8)


def sheets(items: list[tuple[str, BoneScan]], out: Path, per_sheet: int = 4) -> None:
    """Canonical anterior | posterior per study at half size, a grid every 50 source pixels (labels every 100)."""
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(items), per_sheet):
        panels = []
        for key, scan in items[start:start + per_sheet]:
            pair = np.concatenate([grey(scan.views[v].counts) for v in View], axis=1)
            image = Image.fromarray(pair).convert("RGB").resize((pair.shape[1] // 2, pair.shape[0] // 2))
            draw = ImageDraw.Draw(image)
            for r in range(0, pair.shape[0], 50):  # grid in source pixels, drawn at half size
                draw.line([(0, r // 2), (image.width, r // 2)], fill=(0, 90, 160) if r % 100 else (0, 160, 255))
                if r % 100 == 0:
                    draw.text((1, r // 2), str(r), fill=(255, 255, 0))
            for c in range(0, pair.shape[1], 50):
                draw.line([(c // 2, 0), (c // 2, image.height)], fill=(0, 90, 160) if c % 100 else (0, 160, 255))
            draw.text((2, image.height - 12), key, fill=(255, 255, 0))
            panels.append(image)
        sheet = Image.new("RGB", (sum(p.width + 8 for p in panels), panels[0].height), (40, 40, 40))
        x = 0
        for panel in panels:
            sheet.paste(panel, (x, 0))
            x += panel.width + 8
        sheet.save(out / f"sheet_{start // per_sheet:02d}.png")


def pictures(items: list[tuple[str, BoneScan]], mapper: AnatomyMapper, out: Path) -> None:
    """Each study's views (canonical) beside their maps, the midline drawn."""
    out.mkdir(parents=True, exist_ok=True)
    for key, scan in items:
        anatomy = mapper.map(scan)
        panels = []
        for view, image in scan.views.items():
            labels = image.source.to_canonical(anatomy[view].labels)
            rgb = PALETTE[labels].copy()
            g = grey(image.counts)
            blend = (0.45 * rgb + 0.55 * g[..., None]).astype(np.uint8)
            midline = anatomy[view].midline
            if midline is not None:
                rows = np.arange(labels.shape[0])
                cols = np.clip(np.round(midline.column(rows)).astype(int), 0, labels.shape[1] - 1)
                blend[rows, cols] = (255, 255, 255)
            panels += [np.repeat(g[..., None], 3, axis=2), blend]
        Image.fromarray(np.concatenate(panels, axis=1)).save(out / f"{key}.png")


def hit(anatomy: ViewAnatomy, name: str, point: tuple[float, float], labels: tuple[AnatomyLabel, ...],
        radius: int) -> bool:
    source = anatomy.source
    row, col = point
    stored_col = source.columns - 1 - col if source.flip_lr else col
    r0, r1 = max(int(row) - radius, 0), int(row) + radius + 1
    c0, c1 = max(int(stored_col) - radius, 0), int(stored_col) + radius + 1
    window = anatomy.labels[r0:r1, c0:c1]
    if not all((window == label).any() for label in labels):
        return False
    side = name.split(" ")[0]
    return side not in ("left", "right") or anatomy.side(row, stored_col) == side


def score(items: list[tuple[str, BoneScan]], mapper: AnatomyMapper, landmarks: dict, radius: int) -> dict:
    table = {name: [0, 0] for name in LANDMARKS}
    for key, scan in items:
        marks = landmarks.get(key)
        if not marks:
            continue
        anatomy = mapper.map(scan)
        for name, point in marks.items():
            view, labels = LANDMARKS[name]
            table[name][1] += 1
            table[name][0] += hit(anatomy[view], name, tuple(point), labels, radius)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--sheets", type=Path)
    parser.add_argument("--pictures", type=Path)
    parser.add_argument("--landmarks", type=Path)
    parser.add_argument("--anatomy", type=Path, default=None, help="anatomy card (default: the shipped one)")
    parser.add_argument("--radius", type=int, default=12, help="source pixels (2.4 mm each in BS-80K)")
    args = parser.parse_args(argv)
    items = studies(args.data)
    if args.sheets:
        sheets(items, args.sheets)
    if not (args.pictures or args.landmarks):
        return
    mapper = AnatomyMapper.from_card(args.anatomy) if args.anatomy else AnatomyMapper.default()
    if args.pictures:
        pictures(items, mapper, args.pictures)
    if args.landmarks:
        marks = json.loads(args.landmarks.read_text())
        table = score(items, mapper, marks.get("studies", marks), args.radius)
        print(f"anatomy map {mapper.card.version}, radius {args.radius} px, {len(items)} studies")
        print("| landmark | hit | annotated | rate |\n|---|---|---|---|")
        for name, (hits, total) in table.items():
            print(f"| {name} | {hits} | {total} | {hits / total:.2f} |" if total else f"| {name} | 0 | 0 | - |")
        hits, total = (sum(v[i] for v in table.values()) for i in (0, 1))
        print(f"| all | {hits} | {total} | {hits / max(total, 1):.2f} |")


if __name__ == "__main__":
    main()
