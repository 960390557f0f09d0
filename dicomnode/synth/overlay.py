"""A picture of a simulated study for people: both views side by side with the truth contours.

Both views are shown *as stored* (the posterior one as seen from behind, i.e. mirrored, as the
title says), in the clinical inverted grey scale, windowed from 0 to the 97th percentile of the
counts on bone (a reader windows to the skeleton; the bladder saturates); truth masks are outlined
in red.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from dicomnode.synth.simulate import SimulatedStudy
from dicomnode.segmentation.scan import View

TITLE_HEIGHT = 28
GAP = 8
CONTOUR_RGB = (220, 20, 20)


def _view_rgb(counts: np.ndarray, truth: np.ndarray, bone: np.ndarray) -> np.ndarray:
    on_bone = counts[bone]
    top = float(np.percentile(on_bone, 97.0)) if on_bone.size else float(counts.max())
    grey = (255.0 * (1.0 - np.clip(counts / max(top, 1.0), 0.0, 1.0))).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = truth > 0
    rgb[mask & ~binary_erosion(mask)] = CONTOUR_RGB
    return rgb


def overlay_image(study: SimulatedStudy) -> Image.Image:
    """Anterior | posterior (as stored) with truth contours, upscaled so a 256-column view is readable."""
    panels = [_view_rgb(study.images[v], study.truth[v], study.bone_labels[v] > 0) for v in View]
    rows = panels[0].shape[0]
    gap = np.full((rows, GAP, 3), 128, dtype=np.uint8)
    picture = np.concatenate([panels[0], gap, panels[1]], axis=1)
    image = Image.fromarray(picture)
    scale = max(1, 600 // image.width)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + TITLE_HEIGHT), (255, 255, 255))
    canvas.paste(image, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    visible = sum(any(t.visible.values()) for t in study.lesions)
    draw.text((4, 2), "ANTERIOR (as stored) | POSTERIOR (as stored: seen from behind, mirrored)",
              fill=(0, 0, 0))
    draw.text((4, 14), f"{len(study.lesions)} lesions, {visible} visible (red: truth); "
                       f"{study.count_level / 1e6:.2f} M counts/view", fill=(0, 0, 0))
    return canvas


def write_overlay(study: SimulatedStudy, path: Path) -> None:
    overlay_image(study).save(path)
