"""Simulated whole-body 99mTc-MDP bone scans with known metastasis masks (docs/simulation.md).

Modules, one job each: :mod:`patient` (who is scanned and how), :mod:`shapes` (solids in
projection), :mod:`anatomy` (skeleton, soft tissue, organs), :mod:`lesions` (metastases and benign
mimics), :mod:`physics` (attenuation, collimator blur, scatter, counts), :mod:`simulate` (one study
in memory, visibility rule, truth), :mod:`dicom` (NM Image Storage), :mod:`overlay` (PNG),
:mod:`studies` (``dicomnode synth``: folders, truth.npz, manifest.json). Hybrid bone SPECT/CT
exams (``dicomnode synth --spect-ct``) are the subpackage :mod:`dicomnode.synth.spectct`.
"""

from dicomnode.synth.simulate import LesionTruth, SimulatedStudy, simulate_study
from dicomnode.synth.studies import write_studies

__all__ = ["LesionTruth", "SimulatedStudy", "simulate_study", "write_studies"]
