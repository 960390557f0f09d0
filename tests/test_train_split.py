"""The patient-level split never separates a patient's studies or views (papers 001, 002, 004)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dicomnode.train.split import split_patients


@dataclass(frozen=True)
class Item:
    patient_id: str
    study: str
    view: str


def _items(n_patients: int) -> list[Item]:
    # patient k has (k % 3) + 1 studies, each with an anterior and a posterior view
    return [
        Item(f"P{k:03d}", f"S{k:03d}-{s}", view)
        for k in range(n_patients)
        for s in range(k % 3 + 1)
        for view in ("anterior", "posterior")
    ]


@pytest.mark.parametrize("seed", [0, 42, 7])
def test_no_patient_is_split(seed: int) -> None:
    items = _items(40)
    split = split_patients((i.patient_id for i in items), seed=seed)
    subsets = {name: split.select(items, name) for name in ("train", "val", "test")}
    where: dict[str, set[str]] = {}
    for name, chosen in subsets.items():
        for item in chosen:
            where.setdefault(item.patient_id, set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert sum(len(chosen) for chosen in subsets.values()) == len(items)
    assert split.train.isdisjoint(split.val) and split.train.isdisjoint(split.test)
    assert split.val.isdisjoint(split.test)


def test_fractions_are_patients_not_images() -> None:
    split = split_patients([f"P{k}" for k in range(100)], seed=42, fractions=(0.7, 0.15, 0.15))
    assert (len(split.train), len(split.val), len(split.test)) == (70, 15, 15)


def test_deterministic_from_seed() -> None:
    ids = [f"P{k}" for k in range(30)]
    assert split_patients(ids, seed=42) == split_patients(list(reversed(ids)), seed=42)
    assert split_patients(ids, seed=42).test != split_patients(ids, seed=43).test


def test_small_cohort_keeps_every_subset() -> None:
    split = split_patients(["a", "b", "c"], seed=1)
    assert len(split.train) == len(split.val) == len(split.test) == 1


def test_empty_patient_id_refused() -> None:
    with pytest.raises(ValueError, match="Patient ID"):
        split_patients(["P1", ""], seed=1)
    with pytest.raises(ValueError, match="summing to 1"):
        split_patients(["P1"], fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="subset"):
        split_patients(["P1"]).select([], "holdout")


def test_kfold_deals_each_patient_into_exactly_one_fold() -> None:
    from dicomnode.train.split import kfold_patients

    ids = [f"p{i}" for i in range(23)] + ["p3", "p4"]  # a patient with two studies counts once
    folds = kfold_patients(ids, 5, seed=42)
    assert len(folds) == 5 and sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert set().union(*folds) == set(ids) and sum(len(f) for f in folds) == 23
    assert folds == kfold_patients(reversed(ids), 5, seed=42)  # order of input does not matter
    assert folds != kfold_patients(ids, 5, seed=43)
    with pytest.raises(ValueError, match="folds"):
        kfold_patients(["a", "b"], 3)


def test_stratified_folds_spread_the_positive_patients() -> None:
    from dicomnode.train.split import kfold_patients

    ids = [f"p{i:02d}" for i in range(35)]
    positive = set(ids[:13])  # 13 of 35 with a finding, as in the development half
    folds = kfold_patients(ids, 5, seed=42, positive=positive)
    assert sorted(len(f) for f in folds) == [7, 7, 7, 7, 7]
    assert sorted(len(f & positive) for f in folds) == [2, 2, 3, 3, 3]
    assert set().union(*folds) == set(ids)


def test_subsample_keeps_the_share_of_positive_patients() -> None:
    from dicomnode.train.split import subsample_patients

    ids = [f"p{i:02d}" for i in range(40)]
    positive = set(ids[:8])
    quarter = subsample_patients(ids, 0.25, seed=1, positive=positive)
    assert len(quarter) == 10 and len(quarter & positive) == 2
    assert quarter == subsample_patients(reversed(ids), 0.25, seed=1, positive=positive)
    assert quarter != subsample_patients(ids, 0.25, seed=2, positive=positive)
    assert subsample_patients(ids, 1.0) == frozenset(ids)
    assert len(subsample_patients(["a", "b", "c"], 0.1)) == 1  # never empty
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subsample_patients(ids, bad)
