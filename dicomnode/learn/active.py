"""The worker's planar lesion model: the registry's active one when there is one, else ``[model]``.

Looked up before every job (one indexed query), so an ``activate`` or ``rollback`` takes effect at
the next study, not at the next restart. A registry model whose weights cannot be loaded is logged
and the model in use is kept: the results still name their Algorithm Version, so the study traces
to the model that actually read it (docs/training.md, "The site's own model").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dicomnode.learn.registry import active
from dicomnode.segmentation.inference import Segmenter
from dicomnode.store.db import Database

log = logging.getLogger(__name__)


class ActiveSegmenter:
    """Hands the worker the segmenter of the active registry model, loading it when it changes;
    ``configured`` gives the ``[model]`` one (called when no registry model is active, or the
    first one cannot be loaded)."""

    def __init__(self, database: Database, var_dir: Path, configured: Callable[[], Segmenter],
                 load: Callable[[Path], Segmenter]) -> None:
        self.database, self.var_dir, self.configured, self.load = database, var_dir, configured, load
        self._model_id: int | None = None
        self._segmenter: Segmenter | None = None

    def current(self) -> Segmenter:
        """The segmenter to read the next study with."""
        model = active(self.database, self.var_dir)
        model_id = None if model is None else model.id
        if self._segmenter is not None and model_id == self._model_id:
            return self._segmenter
        if model is None:
            self._segmenter = self.configured()
        else:
            try:
                self._segmenter = self.load(model.card_path)
            except Exception as exc:  # a damaged registry entry must not stop the node
                kept = self._segmenter or self.configured()
                log.error("active model cannot be loaded; keeping %s", kept.algorithm.version,
                          extra={"model": model.id, "error": f"{type(exc).__name__}: {exc}"})
                self._segmenter = kept
                return kept
        self._model_id = model_id
        log.info("model switched", extra={"model": model_id, "version": self._segmenter.algorithm.version})
        return self._segmenter
