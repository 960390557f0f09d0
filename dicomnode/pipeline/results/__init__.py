"""DICOM result objects, one sub-package per object family (docs/architecture.md, "results"):
:mod:`.planar` for a whole-body acquisition (:func:`build_results`), :mod:`.volume` for SPECT/CT and
SPECT-only (:func:`build_volume_results`); :mod:`.common`, :mod:`.identity` and :mod:`.text` are shared."""

from dicomnode.pipeline.results.common import ResultKind, ResultOptions
from dicomnode.pipeline.results.planar.build import build_results
from dicomnode.pipeline.results.volume.build import build_volume_results

__all__ = ["ResultKind", "ResultOptions", "build_results", "build_volume_results"]
