"""Decide, with the anatomy map, which hot spots are suspicious bone foci and which are physiological.

A physician reads the anatomy first (issue 25). Every lesion candidate of the lesion model is placed
on the map (:mod:`dicomnode.segmentation.anatomy`) and measured:

- **region**: the most frequent map label under the candidate, a bone's where bone covers a fifth
  of it (:meth:`dicomnode.segmentation.anatomy.ViewAnatomy.region_of`; the map holds no long bone
  near the midline, :func:`dicomnode.segmentation.anatomy.anatomically_possible`);
- **contrast**: its peak counts over the view's body reference level (95th percentile of body
  counts, the level of normal bone, :func:`dicomnode.segmentation.preprocess.reference_level`);
- **asymmetry**: log of its peak counts over the peak counts around its mirror point about the
  map's midline (a paired joint lit on both sides is degenerative, not metastatic); only for
  candidates at least a lesion radius off the midline, else 0 with ``lateral`` = 0;
- **AP agreement**: the other view's peak lesion probability around the same canonical point (a
  lesion deep in a bone shows in both views or in the nearer one, counts on the skin only in one);
- **other-view contrast**: the other view's peak counts around that point over its own reference
  level, the counts' side of the same question: the lesion model may not mark a bone lesion in
  the farther view, where attenuation dims it, though the physician still sees it there;
- **probability**: the lesion model's peak probability (reported through the card's calibration,
  :mod:`dicomnode.segmentation.calibration`, where no second stage scores it).

Then the rules, in order, each named by the reason its verdict gives (docs/segmentation.md,
"Anatomy map and second stage", says which are fixed):

- "urine", *fixed*: a candidate in the bladder or a kidney is urine, never a bone finding;
- "extra-osseous uptake", *fixed*: a candidate whose region is soft tissue or background is extra-osseous (injection
  site, urine contamination, a ureter): tracer outside bone, not a bone lesion;
- "injection site", *fixed*: a candidate in an arm or hand (humeri, forearms and hands) hotter than
  :data:`INJECTION_CONTRAST` × bone and at least :data:`INJECTION_ASYMMETRY` times hotter than its
  mirror point is the injection site (tracer extravasated at the antecubital fossa or the dorsum
  of the hand lies over the bones there; metastases in the arms are rare and rarely this hot);
- "facial and dental uptake", *fixed*: a candidate in the facial bones (maxilla, mandible, nose,
  teeth) is physiological: dental, sinus and nasal uptake lights up in most patients, metastases
  there are rare; on the BS-80K development half 24 of its 25 candidates down to peak 0.5 touch no
  `Abnormal` box, and none at the shipped operating point does (docs/segmentation.md, "Anatomy map
  and second stage");
- "degenerative or traumatic (forearm or hand)", *fixed*: every other candidate in the forearms and
  hands (wrist, hand and elbow uptake: arthritis, old fractures; metastases distal to the elbow are
  rare): on the development half 12 candidates there, none on an `Abnormal` box; the simulator draws
  no metastasis there (:data:`dicomnode.synth.lesions.SITE_FREQUENCIES`) but degenerative wrists;
- "physiological (second stage)", *learned*: every other candidate is scored by the second stage (:class:`SecondStage`, a logistic
  model on the features above and the region group, fitted by ``python -m dicomnode.train.secondstage`` on
  the real ``Normal``/``Abnormal`` boxes and simulated normal variants); below its threshold it is
  judged physiological (symmetric joint uptake, facial and dental uptake, ...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicomnode.segmentation.calibration import Calibration
from dicomnode.segmentation.anatomy import AnatomyLabel, ViewAnatomy
from dicomnode.segmentation.postprocess import lesion_labels
from dicomnode.segmentation.preprocess import body_mask, reference_level
from dicomnode.segmentation.result import Lesion, ViewResult
from dicomnode.segmentation.scan import View, ViewImage

DEFAULT_SECOND_STAGE = Path(__file__).parent / "weights" / "second-stage.json"
#: A unilateral arm or hand hot spot above this many times the bone level is the injection site (the "injection site" rule;
#: the arm lesions boxed `Abnormal` in the BS-80K development half peak at 1.5–3.9 times it),
INJECTION_CONTRAST = 5.0
#: ... when it is at least this many times hotter than its mirror point.
INJECTION_ASYMMETRY = 3.0
ARMS = (AnatomyLabel.HUMERI, AnatomyLabel.FOREARMS_AND_HANDS)
#: Regions whose every remaining candidate is physiological, with the reason (the module docstring's rules).
PHYSIOLOGICAL_REGIONS: dict[AnatomyLabel, str] = {
    AnatomyLabel.FACIAL_BONES: "facial and dental uptake",
    AnatomyLabel.FOREARMS_AND_HANDS: "degenerative or traumatic (forearm or hand)",
}

#: Region groups the second stage weighs apart (one-hot features).
GROUPS: dict[str, tuple[AnatomyLabel, ...]] = {
    "head": (AnatomyLabel.SKULL, AnatomyLabel.FACIAL_BONES),
    "spine": (AnatomyLabel.CERVICAL_SPINE, AnatomyLabel.THORACIC_SPINE, AnatomyLabel.LUMBAR_SPINE,
              AnatomyLabel.SACRUM),
    "thorax": (AnatomyLabel.RIBS, AnatomyLabel.STERNUM, AnatomyLabel.SCAPULAE, AnatomyLabel.CLAVICLES),
    "pelvis": (AnatomyLabel.PELVIS,),
    "limbs": (AnatomyLabel.HUMERI, AnatomyLabel.FOREARMS_AND_HANDS, AnatomyLabel.FEMORA,
              AnatomyLabel.LOWER_LEGS_AND_FEET),
    "soft": (AnatomyLabel.SOFT_TISSUE, AnatomyLabel.BACKGROUND, AnatomyLabel.BLADDER, AnatomyLabel.KIDNEYS),
}
FEATURES = ("logit", "log_contrast", "asymmetry", "lateral", "ap_agreement", "other_view_contrast",
            *(f"group_{g}" for g in GROUPS))


@dataclass(frozen=True)
class Candidate:
    """One lesion candidate with its anatomy and measurements (module docstring)."""

    lesion: Lesion
    region: AnatomyLabel
    side: str | None
    contrast: float
    asymmetry: float
    lateral: bool
    ap_agreement: float
    other_view_contrast: float  # log; 0 without the other view
    probability: float

    def features(self) -> np.ndarray:
        p = float(np.clip(self.probability, 1e-4, 1 - 1e-4))
        group = [float(self.region in labels) for labels in GROUPS.values()]
        return np.array([np.log(p / (1 - p)), np.log(max(self.contrast, 1e-3)), self.asymmetry,
                         float(self.lateral), self.ap_agreement, self.other_view_contrast, *group],
                        dtype=np.float64)

    @property
    def site(self) -> str:
        """The region's name with the side for paired regions, e.g. "left ribs", "bladder"."""
        if self.side is not None and self.region.paired and self.region.is_bone:
            return f"{self.side} {self.region.site}"
        return self.region.site


@dataclass(frozen=True)
class Verdict:
    """A candidate judged: suspicious (reported) or physiological (not a bone lesion), and why."""

    candidate: Candidate
    suspicious: bool
    score: float  # the probability it reports: the second stage's (calibrated), else the peak's; 0 for the fixed rules
    reason: str  # "suspicious focus", a fixed rule's reason (module docstring), "physiological (second stage)"


@dataclass(frozen=True)
class SecondStage:
    """Logistic model on :data:`FEATURES` (weights from ``second-stage.json``), fitted on one lesion
    model's candidates: it judges that model's only (:meth:`judges`), because its features hold
    that model's probability."""

    weights: tuple[float, ...]
    bias: float
    threshold: float  # on the raw score
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    training: dict = field(default_factory=dict)
    candidate_peak: float | None = None  # candidates: components down to this peak probability
    calibration: Calibration | None = None  # raw score → the probability a reported focus carries
    lesion_model: str | None = None  # the model card version whose candidates it was fitted on; None: any
    # "sha256:<12 hex digits>" of the file it was loaded from, which the results name; not part of the model
    version: str | None = field(default=None, compare=False)

    def score(self, features: np.ndarray) -> float:
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias))))

    def probability(self, score: float) -> float:
        """What a focus with this score reports (the calibrated score; the raw one without a calibration)."""
        return self.calibration.probability(score) if self.calibration is not None else score

    def judges(self, lesion_model: str) -> bool:
        """Whether this stage judges the candidates of the lesion model with card version ``lesion_model``."""
        return self.lesion_model is None or self.lesion_model == lesion_model

    @classmethod
    def load(cls, path: Path = DEFAULT_SECOND_STAGE) -> SecondStage:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"{path}: features {data.get('features')} are not this code's {list(FEATURES)}")
        calibration = data.get("calibration")
        return cls(tuple(data["weights"]), float(data["bias"]), float(data["threshold"]),
                   tuple(data["mean"]), tuple(data["scale"]), data.get("training", {}),
                   data.get("candidate_peak"), Calibration.from_dict(calibration) if calibration else None,
                   data.get("lesion_model"), "sha256:" + hashlib.sha256(raw).hexdigest()[:12])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({
            "features": list(FEATURES), "weights": list(self.weights), "bias": self.bias,
            "threshold": self.threshold, "mean": list(self.mean), "scale": list(self.scale),
            "candidate_peak": self.candidate_peak,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "lesion_model": self.lesion_model, "training": self.training}, indent=2) + "\n")


def candidates(images: Mapping[View, ViewImage], results: Mapping[View, ViewResult],
               anatomy: Mapping[View, ViewAnatomy]) -> list[Candidate]:
    """Every lesion of ``results`` measured on its view's map (views without a map are skipped)."""
    out = []
    canonical_probability = {v: images[v].source.to_canonical(r.probability) for v, r in results.items()}
    references = {v: reference_level(images[v].counts, body_mask(images[v].counts), 95.0) for v in results}
    for view, result in results.items():
        if view not in anatomy:
            continue
        image, view_anatomy = images[view], anatomy[view]
        stored = image.source.to_stored(image.counts)
        reference = references[view]
        other = View.POSTERIOR if view is View.ANTERIOR else View.ANTERIOR
        components, _ = lesion_labels(result.mask)
        for lesion in result.lesions:
            mask = components == lesion.label
            region = view_anatomy.region_of(mask)
            row, col = lesion.centroid
            radius = max(2.0, float(np.sqrt(lesion.pixel_count / np.pi)))
            asymmetry, lateral = 0.0, False
            mirrored = view_anatomy.mirror(row, col)
            if mirrored is not None and abs(mirrored[1] - col) >= 2 * radius:
                twin = _peak(stored, mirrored, radius + 2)
                asymmetry = float(np.log(max(lesion.peak_counts, 1e-3) / max(twin, 1e-3)))
                lateral = True
            agreement, other_contrast = 0.0, 0.0
            if other in canonical_probability:
                point = _canonical(image, row, col)
                agreement = _peak(canonical_probability[other], point, radius + 3)
                other_peak = _peak(images[other].counts, point, radius + 3)
                other_contrast = float(np.log(max(other_peak, 1e-3) / max(references[other], 1e-6)))
            probability = float(result.probability[mask].max())
            out.append(Candidate(lesion, region, view_anatomy.side(row, col),
                                 lesion.peak_counts / max(reference, 1e-6), asymmetry, lateral,
                                 agreement, other_contrast, probability))
    return out


def judge(found: Sequence[Candidate], stage: SecondStage | None,
          calibration: Calibration | None = None) -> list[Verdict]:
    """The rules of the module docstring, in order. Without a second stage a suspicious focus
    scores its peak probability, through the lesion model's ``calibration`` where its card has one
    (:mod:`dicomnode.segmentation.calibration`)."""
    verdicts = []
    for candidate in found:
        if candidate.region.is_urinary:
            verdicts.append(Verdict(candidate, False, 0.0, "urine"))
        elif not candidate.region.is_bone:
            verdicts.append(Verdict(candidate, False, 0.0, "extra-osseous uptake"))
        elif (candidate.region in ARMS and candidate.contrast >= INJECTION_CONTRAST
              and (not candidate.lateral or candidate.asymmetry >= np.log(INJECTION_ASYMMETRY))):
            verdicts.append(Verdict(candidate, False, 0.0, "injection site"))
        elif candidate.region in PHYSIOLOGICAL_REGIONS:
            verdicts.append(Verdict(candidate, False, 0.0, PHYSIOLOGICAL_REGIONS[candidate.region]))
        elif stage is None:
            score = calibration.probability(candidate.probability) if calibration else candidate.probability
            verdicts.append(Verdict(candidate, True, score, "suspicious focus"))
        else:
            score = stage.score(candidate.features())
            suspicious = score >= stage.threshold
            verdicts.append(Verdict(candidate, suspicious, stage.probability(score),
                                    "suspicious focus" if suspicious else "physiological (second stage)"))
    return verdicts


def _canonical(image: ViewImage, row: float, col: float) -> tuple[float, float]:
    source = image.source
    return (source.rows - 1 - row if source.flip_ud else row,
            source.columns - 1 - col if source.flip_lr else col)


def _peak(array: np.ndarray, point: tuple[float, float], radius: float) -> float:
    """The maximum of ``array`` in a square of half-side ``radius`` around ``point`` (0 outside)."""
    r, c, k = round(point[0]), round(point[1]), int(np.ceil(radius))
    window = array[max(r - k, 0):r + k + 1, max(c - k, 0):c + k + 1]
    return float(window.max()) if window.size else 0.0
