"""Simulated bone SPECT/CT exams (paper 003's data): phantom, SPECT formation, hybrid DICOM, masks.

:mod:`phantom` (CT numbers, 99mTc-MDP activity, metastatic and benign lesions on the CT grid),
:mod:`imaging` (attenuation, resolution, counts on the SPECT grid), :mod:`dicom` (CT series and NM
RECON TOMO), :mod:`exams` (``dicomnode synth --spect-ct``: folders, truth.npz, manifest.json).
docs/simulation.md "SPECT/CT" describes the model and what it leaves out.
"""

from dicomnode.synth.spectct.exams import CLASSES, SIZES, simulate_exam, write_exams

__all__ = ["CLASSES", "SIZES", "simulate_exam", "write_exams"]
