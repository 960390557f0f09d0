"""Calibrated probabilities: what a reported focus's probability means.

The lesion network's peak probabilities are overconfident (the shipped operating point sits at a
peak of 0.977, where most normal hot spots also reach 0.9+), so a raw peak is a rank, not a
probability. :class:`Calibration` maps it to one by Platt scaling on the logit,
``p' = σ(slope · logit(p) + intercept)`` (Platt, "Probabilistic outputs for support vector
machines", 1999; temperature scaling, Guo et al., ICML 2017, is the case ``intercept = 0``,
``slope = 1 / T``). The map is monotone, so it changes no ranking, no AUC and no reported lesion:
only what the number next to a focus says.

It is fitted on the cross-validation's out-of-fold candidates (:mod:`dicomnode.train.calibration`;
docs/training.md, "Calibration"): for a focus, ``p'`` estimates how often a candidate with that peak
touched an ``Abnormal`` box of a patient the model never trained on; for a study, how often a study
with that highest peak held one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from scipy.special import expit

from dicomnode.segmentation.cardsection import from_card_section

#: Probabilities are clipped to [EPSILON, 1 − EPSILON] before the logit (a float32 map saturates).
EPSILON = 1e-6


def logit(probability: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(probability, float), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """``p' = σ(slope · logit(p) + intercept)``; ``slope`` > 0 keeps the order."""

    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and self.slope > 0 and math.isfinite(self.intercept)):
            raise ValueError(f"calibration needs a finite slope > 0 and a finite intercept, "
                             f"got {self.slope}, {self.intercept}")

    def __call__(self, probability: np.ndarray | float) -> np.ndarray:
        return expit(self.slope * logit(probability) + self.intercept)

    def probability(self, peak: float) -> float:
        """The calibrated probability of one peak."""
        return float(self(peak))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        return from_card_section(cls, data, "calibration")
