"""Secondary Capture (PS3.3 A.8.1): a picture of the views with lesion contours and a legend.

For viewers that show neither SEG nor GSPS. The views are drawn side by side as stored (anterior
as seen from the front, posterior as seen from behind, the way they are read), gray-scale inverted
(high counts dark) through the bone window of :func:`~dicomnode.pipeline.results.common.bone_window`
(the one the GSPS suggests), each lesion's outline in red, thick enough to see without zooming,
with its number as in the SR ("ANT lesion 2" is the 2 on the anterior panel), the view name and
the patient's side letters above each view, and a legend below with the findings, the
approximate BSI and "NOT FOR DIAGNOSTIC USE". Views narrower than 400 columns are enlarged twice
(nearest neighbour) so that the text stays readable; the panels are a sixteenth of a panel's
width apart (at least 16 pixels). Rows above the head and below the feet where no view has body
counts (dicomnode.segmentation.preprocess.body_mask) are left out but for a margin of 1/40 of the rows.

The picture carries Burned In Annotation YES (PS3.3 C.7.6.1.1.11) and, because the posterior
panel is mirrored relative to the anterior one, Patient Orientation only when one view is shown
(it is Type 2C and left empty otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from dicomnode.pipeline.results.planar.burden import BoneBurden
from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    VIEW_ABBREVIATIONS,
    Provenance,
    ResultKind,
    SourceFrame,
    bone_window,
    check_writable,
    source_datasets,
    source_image_sequence,
)
from dicomnode.pipeline.results.planar.contours import LESION_RGB, lesion_outlines
from dicomnode.pipeline.results.text import bsi_summary, lesion_caption, view_summary
from dicomnode.segmentation.preprocess import body_mask
from dicomnode.segmentation.scan import View

logger = logging.getLogger(__name__)

CONTOUR_COLOR = LESION_RGB
TEXT_COLOR = (255, 255, 255)
WARNING_COLOR = (255, 80, 80)
#: Lesions named in the legend per view (their number, region and probability); the SR lists all.
MAX_LEGEND_LESIONS = 8
BACKGROUND = (0, 0, 0)


def build_picture(
    frames: dict[View, SourceFrame], provenance: Provenance, burden: BoneBurden
) -> list[Dataset]:
    """The study's Secondary Capture picture (one instance)."""
    series = provenance.series(ResultKind.SC)
    picture = render(frames, provenance, burden).pixels
    first = next(iter(frames.values()))
    orientation = first.patient_orientation if len(frames) == 1 else ["L", "F"]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=first.dataset,
        pixel_array=picture,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=provenance.uid(ResultKind.SC.value),
        instance_number=1,
        manufacturer=provenance.options.manufacturer,
        patient_orientation=tuple(orientation),
        series_description=series.description,
    )
    if len(frames) > 1:
        sc.PatientOrientation = ""  # two panels, two orientations: said in the picture
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # made on a workstation (PS3.3 C.8.6.1); highdicom writes DI
    sc.ImageComments = f"AI bone metastasis contours and findings; {NOT_FOR_DIAGNOSTIC_USE}"
    sc.SourceImageSequence = source_image_sequence(source_datasets(frames))
    if first.dataset.get("StudyDescription") and not sc.get("StudyDescription"):
        sc.StudyDescription = first.dataset.StudyDescription  # highdicom leaves it out
    sc.DateOfSecondaryCapture = provenance.created.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = provenance.created.strftime("%H%M%S.%f")
    provenance.finish(sc, first.dataset, series)
    logger.info("SC: %d x %d picture", picture.shape[1], picture.shape[0])
    return [check_writable(sc)]


@dataclass(frozen=True)
class Picture:
    """The rendered picture and where each view's stored frame lies in it."""

    pixels: np.ndarray  # RGB uint8, (rows, columns, 3)
    origins: dict[View, tuple[int, int]]  # (x, y) of each stored frame's top-left corner
    scale: int  # picture pixels per source pixel
    rows_shown: tuple[int, int]  # [first, last) source rows drawn (empty rows left out)

    def to_picture(self, view: View, x: float, y: float) -> tuple[float, float]:
        """Picture (x, y) of a point given in DICOM pixel coordinates of ``view``'s frame."""
        left, top = self.origins[view]
        return left + x * self.scale, top + y * self.scale


def render(frames: dict[View, SourceFrame], provenance: Provenance, burden: BoneBurden) -> Picture:
    """Draw the picture (module docstring)."""
    scale = 2 if max(frame.source.columns for frame in frames.values()) < 400 else 1
    first_row, last_row = _rows_with_body(frames)
    rows = (last_row - first_row) * scale
    widths = [frame.source.columns * scale for frame in frames.values()]
    gap = max(16, min(widths) // 16)
    width = sum(widths) + gap * (len(widths) + 1)
    font = ImageFont.load_default(size=max(12, min(widths) // 18))
    small = ImageFont.load_default(size=max(11, font.size * 3 // 4))
    line = int(font.size * 1.35)
    header = 2 * line
    legend_lines = _legend(frames, provenance, burden)
    height = header + rows + gap + line * len(legend_lines) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    center, window, _ = bone_window(frames)
    contour_width = max(3, 2 * scale)
    x = gap
    origins: dict[View, tuple[int, int]] = {}
    for frame, panel_width in zip(frames.values(), widths, strict=True):
        top = header - first_row * scale  # where the stored frame's row 0 would be
        origins[frame.view] = (x, top)
        gray = _gray(frame.stored_counts[first_row:last_row], center, window)
        panel = Image.fromarray(gray).resize((panel_width, rows), Image.NEAREST)
        canvas.paste(panel.convert("RGB"), (x, header))
        for lesion, outline in zip(frame.result.lesions, lesion_outlines(frame.result), strict=True):
            points = [(x + px * scale, top + py * scale) for px, py in outline]
            draw.line(points, fill=CONTOUR_COLOR, width=contour_width, joint="curve")
            row0, _, _, col1 = lesion.bbox
            label_x = min(x + col1 * scale + contour_width, x + panel_width - 1)
            label_y = max(top + row0 * scale - small.size, header)
            draw.text((label_x, label_y), str(lesion.label), fill=CONTOUR_COLOR, font=small)
        # Columns running to the patient's left put the patient's right on the panel's left.
        left, right = ("R", "L") if frame.patient_orientation[0] == "L" else ("L", "R")
        draw.text((x, 0), VIEW_ABBREVIATIONS[frame.view], fill=TEXT_COLOR, font=font)
        draw.text((x, line), left, fill=TEXT_COLOR, font=font)
        draw.text((x + panel_width, line), right, fill=TEXT_COLOR, font=font, anchor="ra")
        x += panel_width + gap
    y = header + rows + gap
    for text, color in legend_lines:
        draw.text((gap, y), text, fill=color, font=font)
        y += line
    return Picture(pixels=np.asarray(canvas, dtype=np.uint8), origins=origins, scale=scale,
                   rows_shown=(first_row, last_row))


def _rows_with_body(frames: dict[View, SourceFrame]) -> tuple[int, int]:
    """[first, last) stored rows that hold body counts in any view, with a margin (docstring)."""
    rows = max(frame.source.rows for frame in frames.values())
    margin = max(1, rows // 40)
    used = np.zeros(rows, bool)
    for frame in frames.values():
        body = body_mask(frame.stored_counts).any(axis=1)
        used[: body.size] |= body
    # A lesion is always shown, even one outside what body_mask finds.
    for frame in frames.values():
        for lesion in frame.result.lesions:
            used[lesion.bbox[0]:lesion.bbox[2]] = True
    if not used.any():
        return 0, rows
    found = np.flatnonzero(used)
    return max(0, int(found[0]) - margin), min(rows, int(found[-1]) + 1 + margin)


def _gray(counts: np.ndarray, center: float, width: float) -> np.ndarray:
    """Inverted linear window (PS3.3 C.11.2.1.2 without the 0.5 offsets): high counts dark."""
    low = center - width / 2
    scaled = np.clip((counts - low) / width, 0.0, 1.0)
    return (255 - np.round(scaled * 255)).astype(np.uint8)


def _legend(
    frames: dict[View, SourceFrame], provenance: Provenance, burden: BoneBurden
) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend's lines and their colours."""
    algorithm = provenance.algorithm
    lines = [(f"Red: AI lesion contours, numbered as in the SR ({algorithm.name} {algorithm.version})",
              CONTOUR_COLOR)]
    for view in frames:
        lines.append((view_summary(burden.views[view]), TEXT_COLOR))
        sited = burden.views[view].lesions
        lines += [(f"  {VIEW_ABBREVIATIONS[view]} " + lesion_caption(item.lesion.label, item.site, item.lesion.probability),
                   CONTOUR_COLOR) for item in sited[:MAX_LEGEND_LESIONS]]
        if len(sited) > MAX_LEGEND_LESIONS:
            lines.append((f"  ... and {len(sited) - MAX_LEGEND_LESIONS} more (see the SR)", CONTOUR_COLOR))
    missing = [view for view in View if view not in frames]
    lines += [(f"{VIEW_ABBREVIATIONS[view]}: view missing", WARNING_COLOR) for view in missing]
    lines.append((bsi_summary(burden), TEXT_COLOR))
    lines.append(("BSI regions from the anatomy map" if burden.anatomy_mapped
                  else "BSI from planar counts, no skeletal segmentation", TEXT_COLOR))
    lines.append((NOT_FOR_DIAGNOSTIC_USE, WARNING_COLOR))
    return lines
