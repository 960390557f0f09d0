"""The model registry: every model the site trained, its card, data, metrics and state, and who
switched which model on when (tables ``model`` and ``model_activation``, migration 0005).

Weights are copied under ``[storage] var_dir``/models/<version>/ (never into the repository) with
their card, whose ``version`` is rewritten to the registry's version: it is the Algorithm Version
(PS3.3 C.8.20.2) every result of that model carries, so a study traces to the row that read it.

One model per task is ACTIVE at most. ``activate`` retires the active one; ``rollback`` undoes the
last switch (the activation log is a stack: each activation pushes, each rollback pops) and falls
back to the configured ``[model] weights`` when the stack is empty. Each switch is one transaction.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dicomnode.store.db import Database
from dicomnode.store.models import ModelActivation, ModelState, RegisteredModel, utcnow

PLANAR_LESIONS = "planar-lesions"  # the card task the worker reads studies with (modelcard.PLANAR_LESIONS)
MODELS_FOLDER = "models"
_USER = re.compile(r"[^A-Za-z0-9 ._@-]")


class RegistryError(ValueError):
    """A registry request that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class ActiveModel:
    """What the worker needs to load a registry model: its row id, version and card path."""

    id: int
    version: str
    card_path: Path


def who(by: str | None = None) -> str:
    """The person recorded for a switch: ``--by`` or the OS user, as plain text of at most 64 characters."""
    name = by if by is not None else getpass.getuser()
    cleaned = _USER.sub("_", name.strip())[:64]
    if not cleaned:
        raise RegistryError("who switched the model must be named (--by)")
    return cleaned


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register(database: Database, var_dir: Path, card_path: Path, *, by: str,
             data: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> RegisteredModel:
    """Copy a trained model (its ``.json`` card and the weights it names) into the node's data
    folder and record it as a CANDIDATE. Its version is ``site-<UTC time>-<sha256[:8]>``."""
    card = json.loads(card_path.read_text())
    weights = card_path.parent / str(card.get("weights") or "")
    if not card.get("weights") or not weights.is_file():
        raise RegistryError(f"{card_path}: names no weights file beside it")
    sha = _sha256(weights)
    if card.get("sha256") != sha:
        raise RegistryError(f"{weights}: sha256 {sha} does not match its card's")
    version = f"site-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{sha[:8]}"
    folder = Path(var_dir) / MODELS_FOLDER / version
    folder.mkdir(parents=True, exist_ok=False)
    shutil.copy2(weights, folder / weights.name)
    card["version"] = version
    (folder / "model.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    with database.session(write=True) as session:
        row = RegisteredModel(task=str(card.get("task", PLANAR_LESIONS)), version=version,
                              weights_path=str((folder / weights.name).relative_to(var_dir)), sha256=sha,
                              card=json.dumps(card, sort_keys=True), data=json.dumps(data or {}, sort_keys=True),
                              metrics=json.dumps(metrics or {}, sort_keys=True), state=ModelState.CANDIDATE,
                              created_by=who(by))
        session.add(row)
        session.flush()
        session.expunge(row)
    return row


def card_path(var_dir: Path, row: RegisteredModel) -> Path:
    """The card of a registered model in the node's data folder."""
    return Path(var_dir) / Path(row.weights_path).parent / "model.json"


def set_metrics(database: Database, model_id: int, metrics: dict[str, Any]) -> None:
    """Record the gate's report on a model."""
    with database.session(write=True) as session:
        row = session.get(RegisteredModel, model_id)
        if row is None:
            raise RegistryError(f"no model {model_id}")
        row.metrics = json.dumps(metrics, sort_keys=True)


def list_models(database: Database) -> list[RegisteredModel]:
    """Every registered model, oldest first."""
    with database.session() as session:
        rows = list(session.scalars(select(RegisteredModel).order_by(RegisteredModel.id)).all())
        for row in rows:
            session.expunge(row)
    return rows


def activations(database: Database, task: str = PLANAR_LESIONS) -> list[ModelActivation]:
    """The task's switches, oldest first."""
    with database.session() as session:
        rows = list(session.scalars(select(ModelActivation).where(ModelActivation.task == task)
                                    .order_by(ModelActivation.id)).all())
        for row in rows:
            session.expunge(row)
    return rows


def _stack(log: list[ModelActivation]) -> list[int | None]:
    """The models active in turn: each activation pushes, each rollback pops (the top is active)."""
    stack: list[int | None] = []
    for entry in log:
        if entry.action == "activate":
            stack.append(entry.model_id)
        elif stack:
            stack.pop()
    return stack


def _switch(session: Any, task: str, model_id: int | None, action: str, by: str) -> None:
    now = utcnow()
    for row in session.scalars(select(RegisteredModel).where(RegisteredModel.task == task,
                                                             RegisteredModel.state == ModelState.ACTIVE)):
        row.state = ModelState.RETIRED
    if model_id is not None:
        target = session.get(RegisteredModel, model_id)
        target.state, target.activated_at, target.activated_by = ModelState.ACTIVE, now, by
    session.add(ModelActivation(task=task, model_id=model_id, action=action, by=by, at=now))


def activate(database: Database, model_id: int, *, by: str | None = None) -> RegisteredModel:
    """Make model ``model_id`` the active one of its task, retiring the one before."""
    person = who(by)
    with database.session(write=True) as session:
        row = session.get(RegisteredModel, model_id)
        if row is None:
            raise RegistryError(f"no model {model_id}")
        if row.state is ModelState.ACTIVE:
            raise RegistryError(f"model {model_id} ({row.version}) is already active")
        _switch(session, row.task, model_id, "activate", person)
        session.flush()
        session.expunge(row)
    return row


def rollback(database: Database, task: str = PLANAR_LESIONS, *, by: str | None = None) -> int | None:
    """Undo the task's last switch: the model active before it is active again (None: the
    configured ``[model] weights``). Returns that model's id."""
    person = who(by)
    with database.session(write=True) as session:
        log = list(session.scalars(select(ModelActivation).where(ModelActivation.task == task)
                                   .order_by(ModelActivation.id)).all())
        stack = _stack(log)
        if not stack:
            raise RegistryError(f"no {task} model was activated: nothing to roll back "
                                "(the configured [model] weights are in use)")
        stack.pop()
        previous = stack[-1] if stack else None
        _switch(session, task, previous, "rollback", person)
    return previous


def active(database: Database, var_dir: Path, task: str = PLANAR_LESIONS) -> ActiveModel | None:
    """The task's active registry model, or None (the configured ``[model] weights`` apply)."""
    with database.session() as session:
        row = session.scalars(select(RegisteredModel).where(RegisteredModel.task == task,
                                                            RegisteredModel.state == ModelState.ACTIVE)).first()
        if row is None:
            return None
        return ActiveModel(row.id, row.version, card_path(var_dir, row))
