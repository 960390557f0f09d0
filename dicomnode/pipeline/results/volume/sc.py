"""Secondary Capture (PS3.3 A.8.1) of a SPECT/CT result: fused axial and coronal slices with contours.

Two panels through the centroid of the largest lesion (or the middle of the volume when there is
none): the axial slice as radiologists read it (patient's right on the left, anterior up) and the
coronal slice (head up, patient's right on the left), each CT in a bone-and-soft-tissue window
(−200 to 1300 HU) in gray with the SPECT (on the CT grid) laid over in a hot colour scale (red →
yellow, from 20 % to 100 % of four times the median counts of bone, CT above 150 HU: normal bone
stays faint, a lesion with a few times its uptake saturates, and the bladder does not set the scale) and the lesions'
outlines (metastatic red, benign green). The coronal panel is stretched to square voxels. A legend
below names the lesions with class, volume and probability and says "NOT FOR DIAGNOSTIC USE".
Without a CT (SPECT-only) the panels show the SPECT alone in gray, 0 to four times the median counts
of the body (as :func:`dicomnode.segmentation.spectct.spect_body` outlines it), with the same contours.
Burned In Annotation YES; Patient Orientation left empty (two panels, two orientations).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    Provenance,
    ResultKind,
    check_writable,
    source_image_sequence,
)
from dicomnode.pipeline.results.volume.inputs import SegmentedVolume
from dicomnode.segmentation.volume_lesions import BENIGN, METASTATIC
from dicomnode.segmentation.spectct import spect_body

CT_WINDOW = (-200.0, 1300.0)
BONE_HU = 150.0
BONE_SCALE = 4.0
CONTOURS = {METASTATIC: (255, 40, 40), BENIGN: (40, 230, 40)}
PANEL = 384
LEGEND_LINES = 6


def _fused(hu: np.ndarray | None, spect: np.ndarray | None, labels: np.ndarray, spect_top: float) -> np.ndarray:
    """One panel: CT in gray with the SPECT in hot colours over it, or the SPECT alone in gray."""
    if hu is None:
        gray = np.clip((spect if spect is not None else np.zeros(labels.shape)) / spect_top, 0, 1)
    else:
        gray = np.clip((hu - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if spect is not None and hu is not None:
        level = np.clip(spect / spect_top, 0, 1)
        alpha = np.clip((level - 0.2) / 0.8, 0, 1)[..., None] * 0.7
        hot = np.stack([np.ones_like(level), level, np.zeros_like(level)], axis=-1)
        rgb = rgb * (1 - alpha) + hot * alpha
    rgb = (rgb * 255).astype(np.uint8)
    for label, colour in CONTOURS.items():
        mask = labels == label
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return rgb


def _panel(rgb: np.ndarray, aspect: float) -> Image.Image:
    """Scale a panel to :data:`PANEL` wide, rows stretched by ``aspect`` (row spacing / column spacing)."""
    height = max(1, round(PANEL * rgb.shape[0] * aspect / rgb.shape[1]))
    return Image.fromarray(rgb).resize((PANEL, height), Image.NEAREST)


def render(volume: SegmentedVolume) -> np.ndarray:
    """The picture as ``(rows, columns, 3)`` uint8."""
    if volume.lesions:
        k, i, _ = (int(round(v)) for v in max(volume.lesions, key=lambda les: les.voxels).centroid)
    else:
        k, i = volume.labels.shape[0] // 2, volume.labels.shape[1] // 2
    spect, hu = volume.spect, volume.hu
    spect_top = 1.0
    if spect is not None:
        inside = hu > BONE_HU if hu is not None else spect_body(spect)
        reference = spect[inside] if inside.any() else spect
        spect_top = max(BONE_SCALE * float(np.median(reference)), 1e-6)
    axial = _fused(None if hu is None else hu[k], None if spect is None else spect[k], volume.labels[k], spect_top)
    coronal = _fused(None if hu is None else hu[::-1, i], None if spect is None else spect[::-1, i],
                     volume.labels[::-1, i], spect_top)
    g = volume.geometry
    panels = [_panel(axial, g.pixel_spacing[0] / g.pixel_spacing[1]), _panel(coronal, g.slice_spacing / g.pixel_spacing[1])]
    legend_height = 16 * LEGEND_LINES + 8
    height = max(p.height for p in panels) + 20 + legend_height
    canvas = Image.new("RGB", (PANEL * 2, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for n, (panel, title) in enumerate(zip(panels, (f"axial, slice {k + 1}", f"coronal, row {i + 1}"))):
        canvas.paste(panel, (n * PANEL, 20))
        draw.text((n * PANEL + 4, 4), f"{title}   R | L", fill=(255, 255, 255), font=font)
    y = 20 + max(p.height for p in panels) + 4
    lines = [f"{les.class_name} lesion {les.number}: {les.volume_ml:.1f} mL, p={les.probability:.2f}"
             for les in sorted(volume.lesions, key=lambda les: -les.voxels)]
    if len(lines) > LEGEND_LINES - 1:
        lines = lines[:LEGEND_LINES - 2] + [f"... and {len(lines) - (LEGEND_LINES - 2)} more (see the SR)"]
    lines = (lines or ["no lesion found"]) + [f"red: metastatic, green: benign; {NOT_FOR_DIAGNOSTIC_USE}"]
    for line in lines:
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
        y += 16
    return np.asarray(canvas)


def build_hybrid_picture(volume: SegmentedVolume, provenance: Provenance) -> Dataset:
    """The SC instance (one) in this run's SC series."""
    series = provenance.series(ResultKind.SC)
    first = volume.reference
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=first, pixel_array=render(volume),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=series.uid,
        series_number=series.number, sop_instance_uid=provenance.uid(ResultKind.SC.value, "spect-ct"),
        instance_number=1, manufacturer=provenance.options.manufacturer, patient_orientation=("L", "P"),
        series_description=series.description,
    )
    sc.PatientOrientation = ""
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.ImageComments = (f"AI bone lesions on {'fused SPECT/CT' if volume.ct else 'SPECT'}; "
                        f"{NOT_FOR_DIAGNOSTIC_USE}")
    sc.SourceImageSequence = source_image_sequence([*volume.ct, *([volume.nm] if volume.nm is not None else [])])
    sc.DateOfSecondaryCapture = provenance.created.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = provenance.created.strftime("%H%M%S.%f")
    provenance.finish(sc, first, series)
    return check_writable(sc)
