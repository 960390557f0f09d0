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
    """Hands the worker the segmenter of the active registry model, loading it when it changes."""

    def __init__(self, database: Database, var_dir: Path, configured: Segmenter,
                 load: Callable[[Path], Segmenter]) -> None:
        self.database, self.var_dir, self.configured, self.load = database, var_dir, configured, load
        self._model_id: int | None = None
        self._segmenter = configured

    def current(self) -> Segmenter:
        """The segmenter to read the next study with."""
        model = active(self.database, self.var_dir)
        model_id = None if model is None else model.id
        if model_id == self._model_id:
            return self._segmenter
        if model is None:
            self._segmenter = self.configured
        else:
            try:
                self._segmenter = self.load(model.card_path)
            except Exception as exc:  # a damaged registry entry must not stop the node
                log.error("active model cannot be loaded; keeping %s", self._segmenter.algorithm.version,
                          extra={"model": model.id, "error": f"{type(exc).__name__}: {exc}"})
                return self._segmenter
        self._model_id = model_id
        log.info("model switched", extra={"model": model_id, "version": self._segmenter.algorithm.version})
        return self._segmenter
