"""Over 200 simulated studies the lesions follow the distributions the simulator states."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dicomnode.synth import simulate_study
from dicomnode.synth.lesions import P_NO_LESION, SITE_FREQUENCIES, SIZE_RANGE_MM, UPTAKE_RANGE
from dicomnode.segmentation.scan import View

N_STUDIES = 200
ALPHA = 1e-3  # a fixed seed makes these deterministic; the threshold only guards against a wrong model


@pytest.fixture(scope="module")
def population():
    return [simulate_study(np.random.default_rng([2024, i])) for i in range(N_STUDIES)]


def _lesions(population):
    return [t.lesion for study in population for t in study.lesions]


def _log_uniform_cdf(low: float, high: float):
    return lambda x: np.clip((np.log(x) - np.log(low)) / (np.log(high) - np.log(low)), 0.0, 1.0)


@pytest.mark.slow
def test_sites_follow_lung_cancer_frequencies(population):
    lesions = _lesions(population)
    assert len(lesions) > 600
    sites = list(SITE_FREQUENCIES)
    observed = np.array([sum(les.site == s for les in lesions) for s in sites])
    expected = np.array([SITE_FREQUENCIES[s] for s in sites]) / sum(SITE_FREQUENCIES.values())
    assert observed.sum() == len(lesions)  # no lesion outside the stated sites
    assert stats.chisquare(observed, expected * observed.sum()).pvalue > ALPHA
    share = dict(zip(sites, observed / observed.sum()))
    spine = share["thoracic_spine"] + share["lumbar_spine"] + share["cervical_spine"]
    assert spine > share["ribs"] > share["pelvis"] > share["skull"]


@pytest.mark.slow
def test_sizes_and_uptakes_are_log_uniform_in_their_ranges(population):
    lesions = _lesions(population)
    sizes = np.array([les.size_mm for les in lesions])
    uptakes = np.array([les.uptake_ratio for les in lesions])
    assert SIZE_RANGE_MM[0] <= sizes.min() and sizes.max() <= SIZE_RANGE_MM[1]
    assert UPTAKE_RANGE[0] <= uptakes.min() and uptakes.max() <= UPTAKE_RANGE[1]
    assert stats.kstest(sizes, _log_uniform_cdf(*SIZE_RANGE_MM)).pvalue > ALPHA
    assert stats.kstest(uptakes, _log_uniform_cdf(*UPTAKE_RANGE)).pvalue > ALPHA
    # and not merely uniform on a linear scale
    assert stats.kstest(sizes, stats.uniform(SIZE_RANGE_MM[0], np.ptp(SIZE_RANGE_MM)).cdf).pvalue < ALPHA


@pytest.mark.slow
def test_lesion_burden_per_study(population):
    counts = np.array([len(study.lesions) for study in population])
    zero = int((counts == 0).sum())
    assert stats.binomtest(zero, N_STUDIES, P_NO_LESION).pvalue > ALPHA
    assert counts.max() >= 11  # extensive disease occurs
    assert ((counts >= 2) & (counts <= 10)).sum() > ((counts == 1).sum())  # multiple beats solitary


@pytest.mark.slow
def test_visibility_depends_on_size_uptake_and_depth(population):
    truths = [t for study in population for t in study.lesions]
    visible = np.array([any(t.visible.values()) for t in truths])
    sizes = np.array([t.lesion.size_mm for t in truths])
    uptakes = np.array([t.lesion.uptake_ratio for t in truths])
    assert 0.2 < visible.mean() < 0.9
    assert visible[sizes > 20].mean() > visible[sizes < 10].mean() + 0.3
    assert visible[uptakes > 3].mean() > visible[uptakes < 1.8].mean() + 0.2
    spine = [t for t in truths if t.lesion.site == "thoracic_spine"]
    posterior = np.mean([t.visible[View.POSTERIOR] for t in spine])
    anterior = np.mean([t.visible[View.ANTERIOR] for t in spine])
    assert posterior > anterior + 0.2
    one_view_only = np.mean([t.visible[View.ANTERIOR] != t.visible[View.POSTERIOR] for t in truths])
    assert one_view_only > 0.05
