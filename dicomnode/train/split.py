"""Patient-level train / validation / test split.

The papers insist that both views of a patient, and every study of that patient, land in the same
subset, because they look alike (paper 001 "Dataset": "we strictly placed the anterior and posterior
images of the same patient into the same type of dataset"; paper 002 "Each subset was divided based
on patients rather than individual images"; paper 004 §3.3). So the unit of the split is the Patient
ID (0010,0020), never the image or the study.

The split is deterministic from the seed: patient IDs are sorted, shuffled with ``random.Random(seed)``
and cut at the documented fractions (default 70/15/15). Counts are rounded so that no subset with a
non-zero fraction is left empty while there are at least as many patients as such subsets.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class HasPatient(Protocol):
    @property
    def patient_id(self) -> str: ...


T = TypeVar("T", bound=HasPatient)

SUBSETS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Which patients are in which subset."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]
    seed: int

    def subset_of(self, patient_id: str) -> str:
        for name in SUBSETS:
            if patient_id in getattr(self, name):
                return name
        raise KeyError(f"patient {patient_id!r} is not in this split")

    def select(self, items: Iterable[T], subset: str) -> list[T]:
        """The items whose patient is in ``subset`` ("train", "val", "test" or "all")."""
        if subset == "all":
            return list(items)
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)} or 'all', got {subset!r}")
        chosen = getattr(self, subset)
        return [item for item in items if item.patient_id in chosen]

    def to_json(self) -> dict[str, object]:
        return {"seed": self.seed, **{name: sorted(getattr(self, name)) for name in SUBSETS}}


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n × fractions``, then one patient for any empty non-zero subset."""
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, fraction in enumerate(fractions):
        if fraction > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_patients(
    patient_ids: Iterable[str],
    *,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
) -> Split:
    """Split distinct patient IDs into dicomnode/train/val/test; empty or blank IDs are refused."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(patient_ids))
    if not ids:
        raise ValueError("no patients to split")
    if any(not pid or not pid.strip() for pid in ids):
        raise ValueError("a study has an empty Patient ID (0010,0020); the split needs one per patient")
    random.Random(seed).shuffle(ids)
    n_train, n_val, _ = _counts(len(ids), fractions)
    return Split(
        train=frozenset(ids[:n_train]),
        val=frozenset(ids[n_train : n_train + n_val]),
        test=frozenset(ids[n_train + n_val :]),
        seed=seed,
    )


def kfold_patients(
    patient_ids: Iterable[str], folds: int, *, seed: int = 42, positive: Iterable[str] | None = None
) -> list[frozenset[str]]:
    """Distinct patient IDs dealt into ``folds`` disjoint folds of near-equal size (shuffled with
    ``random.Random(seed)``), for patient-level cross-validation.

    With ``positive`` (the patients with a finding), the folds are stratified: positive and negative
    patients are shuffled and dealt separately, so every fold holds positives wherever there are at
    least ``folds`` of them (a fold without one has no sensitivity and no AUC)."""
    ids = sorted(set(patient_ids))
    if folds < 2 or folds > len(ids):
        raise ValueError(f"{folds} folds need between 2 and {len(ids)} (the number of patients)")
    rng = random.Random(seed)
    marked = set(positive or ())
    dealt: list[set[str]] = [set() for _ in range(folds)]
    offset = 0
    for group in ([i for i in ids if i in marked], [i for i in ids if i not in marked]):
        rng.shuffle(group)
        for k, patient in enumerate(group):
            dealt[(offset + k) % folds].add(patient)
        offset += len(group)  # the next group starts where this one stopped, so sizes stay even
    return [frozenset(fold) for fold in dealt]


def subsample_patients(
    patient_ids: Iterable[str], fraction: float, *, seed: int = 42, positive: Iterable[str] | None = None
) -> frozenset[str]:
    """A ``fraction`` of the distinct patient IDs (at least one), drawn with ``random.Random(seed)``;
    with ``positive``, positive and negative patients are drawn separately in that fraction, so a
    learning curve's smaller training sets keep the share of patients with a finding."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = sorted(set(patient_ids))
    rng = random.Random(seed)
    marked = set(positive or ())
    kept: set[str] = set()
    for group in ([i for i in ids if i in marked], [i for i in ids if i not in marked]):
        if group:
            kept.update(rng.sample(group, max(1, round(fraction * len(group)))))
    return frozenset(kept)

