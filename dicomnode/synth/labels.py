"""The simulator's exact anatomy: an :class:`~dicomnode.segmentation.anatomy.AnatomyLabel` per pixel, and the midline.

The simulator draws every solid itself, so it knows what each pixel shows. A pixel takes the label
of the structure that puts the most activity on its ray (concentration × chord, the counts it
contributes before attenuation) among those whose chord reaches :data:`MIN_CHORD_MM`: the bladder
wins over the sacrum and pubis it overlies, the spine over the kidneys, a kidney over the thin
lower ribs. Pixels with soft tissue on the ray and no such structure are soft tissue; the rest is
background. The midline is the patient's x = 0 line through the grid (shift and rotation of
:class:`~dicomnode.synth.physics.Grid`). Labels are in the canonical orientation here;
:mod:`dicomnode.synth.simulate` stores them per view like every other per-pixel array.
"""

from __future__ import annotations

import numpy as np

from dicomnode.synth.anatomy import Structure
from dicomnode.synth.physics import Grid
from dicomnode.segmentation.anatomy import AnatomyLabel, Midline

#: A structure labels a pixel only where its ray crosses at least this much of it (mm).
MIN_CHORD_MM = 1.0
#: Soft tissue thinner than this on a ray (mm) is the body's blurred edge: background.
MIN_BODY_MM = 1.0

_BY_SITE = {
    "skull": AnatomyLabel.SKULL, "mandible": AnatomyLabel.FACIAL_BONES,
    "cervical_spine": AnatomyLabel.CERVICAL_SPINE, "thoracic_spine": AnatomyLabel.THORACIC_SPINE,
    "lumbar_spine": AnatomyLabel.LUMBAR_SPINE, "sacrum": AnatomyLabel.SACRUM,
    "pelvis": AnatomyLabel.PELVIS, "ribs": AnatomyLabel.RIBS, "sternum": AnatomyLabel.STERNUM,
    "clavicle": AnatomyLabel.CLAVICLES, "scapula": AnatomyLabel.SCAPULAE,
    "humerus": AnatomyLabel.HUMERI, "forearm": AnatomyLabel.FOREARMS_AND_HANDS,
    "hand": AnatomyLabel.FOREARMS_AND_HANDS, "femur": AnatomyLabel.FEMORA,
    "patella": AnatomyLabel.FEMORA, "tibia": AnatomyLabel.LOWER_LEGS_AND_FEET,
    "fibula": AnatomyLabel.LOWER_LEGS_AND_FEET, "foot": AnatomyLabel.LOWER_LEGS_AND_FEET,
    "kidney": AnatomyLabel.KIDNEYS, "bladder": AnatomyLabel.BLADDER,
}


def structure_label(structure: Structure) -> AnatomyLabel:
    """The label of one simulated structure (the facial bones are part of the "skull" site)."""
    if structure.name == "facial bones":
        return AnatomyLabel.FACIAL_BONES
    return _BY_SITE[structure.site]


class LabelCanvas:
    """Collects structures as they are projected and keeps, per pixel, the most active one."""

    def __init__(self, thickness: np.ndarray) -> None:
        self.labels = np.where(thickness >= MIN_BODY_MM, AnatomyLabel.SOFT_TISSUE,
                               AnatomyLabel.BACKGROUND).astype(np.uint8)
        self.activity = np.zeros(thickness.shape, np.float32)

    def add(self, structure: Structure, window: tuple[slice, slice], chord: np.ndarray) -> None:
        """Record ``structure`` whose chord map on ``window`` is ``chord``."""
        activity = structure.concentration * chord
        wins = (chord >= MIN_CHORD_MM) & (activity > self.activity[window])
        self.activity[window][wins] = activity[wins]
        self.labels[window][wins] = structure_label(structure)


def true_midline(grid: Grid, height_mm: float) -> Midline:
    """The patient's midline (x = 0 from vertex to soles) in canonical pixel coordinates."""
    r0, c0 = grid.to_pixel(0.0, 0.0)
    r1, c1 = grid.to_pixel(0.0, height_mm)
    slope = (c1 - c0) / (r1 - r0)
    return Midline(float(c0 - slope * r0), float(slope))
