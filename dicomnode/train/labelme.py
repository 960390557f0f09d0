"""Lesion labels drawn in LabelMe (the tool the papers' annotators used: paper 001 "Image labelling",
paper 004 §2.2), turned into a mask on the annotated DICOM frame.

A LabelMe file annotates one view of one NM instance:

- ``imagePath`` is the annotated DICOM file, relative to the JSON file's folder (LabelMe's own
  convention for the image next to the annotation).
- Point coordinates are ``(x, y)`` = (column, row) in that frame *as stored* (what the annotator saw),
  so the mask is in the stored layout, like every per-pixel array of a result.
- For an instance that holds both views (a two-frame whole-body instance), the image-level ``flags``
  must mark exactly one of ``anterior`` / ``posterior`` true; for a one-view instance they may be absent.
- Area shapes (``polygon``, ``rectangle``, ``circle``) are filled (a pixel belongs to the lesion when
  its centre is inside); lines and points carry no area and are refused with a clear error, as is a
  file whose ``imageHeight``/``imageWidth`` disagree with the frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import disk, polygon

from dicomnode.segmentation.scan import View

AREA_SHAPES = ("polygon", "rectangle", "circle")


class LabelMeError(ValueError):
    """A LabelMe file that cannot be used as a lesion label; the message names the file and the fault."""


@dataclass(frozen=True)
class LabelMeShape:
    label: str
    shape_type: str
    points: tuple[tuple[float, float], ...]  # (x = column, y = row)


@dataclass(frozen=True)
class LabelMeAnnotation:
    path: Path
    image_path: Path  # resolved path of the annotated DICOM file
    rows: int
    columns: int
    view: View | None  # from the image-level flags; None when no view flag is set
    shapes: tuple[LabelMeShape, ...]

    def mask(self) -> np.ndarray:
        """The union of all area shapes as a uint8 (rows, columns) mask in the stored frame layout."""
        out = np.zeros((self.rows, self.columns), dtype=np.uint8)
        for shape in self.shapes:
            xy = np.asarray(shape.points, dtype=float)
            if shape.shape_type == "polygon":
                rr, cc = polygon(xy[:, 1], xy[:, 0], shape=out.shape)
            elif shape.shape_type == "rectangle":
                (x0, y0), (x1, y1) = xy
                corners_r = [y0, y0, y1, y1]
                corners_c = [x0, x1, x1, x0]
                rr, cc = polygon(corners_r, corners_c, shape=out.shape)
            else:  # circle: centre, then a point on the circumference (LabelMe convention)
                (cx, cy), (px, py) = xy
                rr, cc = disk((cy, cx), math.hypot(px - cx, py - cy), shape=out.shape)
            out[rr, cc] = 1
        return out


def _shape(raw: object, path: Path, index: int) -> LabelMeShape:
    if not isinstance(raw, dict):
        raise LabelMeError(f"{path}: shape {index} is not an object")
    shape_type = raw.get("shape_type") or "polygon"
    label = str(raw.get("label", ""))
    if shape_type not in AREA_SHAPES:
        raise LabelMeError(
            f"{path}: shape {index} ({label!r}) is a {shape_type!r}, which has no area; "
            f"lesions must be drawn as {', '.join(AREA_SHAPES)}"
        )
    points = raw.get("points")
    try:
        pts = tuple((float(x), float(y)) for x, y in points)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise LabelMeError(f"{path}: shape {index} ({label!r}) has malformed points") from None
    needed = 3 if shape_type == "polygon" else 2
    if len(pts) < needed or (shape_type != "polygon" and len(pts) != 2):
        raise LabelMeError(f"{path}: {shape_type} shape {index} ({label!r}) has {len(pts)} points")
    if not all(math.isfinite(v) for p in pts for v in p):
        raise LabelMeError(f"{path}: shape {index} ({label!r}) has non-finite coordinates")
    return LabelMeShape(label=label, shape_type=shape_type, points=pts)


def _view(flags: object, path: Path) -> View | None:
    if not isinstance(flags, dict):
        return None
    chosen = [view for view in View if flags.get(view.value) is True]
    if len(chosen) > 1:
        raise LabelMeError(f"{path}: flags mark both anterior and posterior; one file labels one view")
    return chosen[0] if chosen else None


def read_labelme(path: Path | str) -> LabelMeAnnotation:
    """Parse and check one LabelMe JSON file (the DICOM file it names must exist)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelMeError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict) or "shapes" not in raw or "imagePath" not in raw:
        raise LabelMeError(f"{path}: not a LabelMe file (needs 'shapes' and 'imagePath')")
    try:
        rows, columns = int(raw["imageHeight"]), int(raw["imageWidth"])
    except (KeyError, TypeError, ValueError):
        raise LabelMeError(f"{path}: imageHeight / imageWidth missing or not integers") from None
    if rows < 1 or columns < 1:
        raise LabelMeError(f"{path}: image size {rows}×{columns} is empty")
    image_path = (path.parent / str(raw["imagePath"]).replace("\\", "/")).resolve()
    if not image_path.is_file():
        raise LabelMeError(f"{path}: the annotated image {raw['imagePath']!r} does not exist")
    if not isinstance(raw["shapes"], list):
        raise LabelMeError(f"{path}: 'shapes' is not a list")
    shapes = tuple(_shape(s, path, i) for i, s in enumerate(raw["shapes"]))
    return LabelMeAnnotation(
        path=path,
        image_path=image_path,
        rows=rows,
        columns=columns,
        view=_view(raw.get("flags"), path),
        shapes=shapes,
    )


def is_labelme(path: Path) -> bool:
    """Cheap test whether a ``.json`` file looks like a LabelMe annotation."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "shapes" in raw and "imagePath" in raw
