"""The model registry: register, activate, rollback with who and when; the worker's model follows
the active one at the next job and its results name the registry version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.learn import registry
from dicomnode.learn.active import ActiveSegmenter
from dicomnode.pipeline.models import load_segmenter
from dicomnode.segmentation.inference import WEIGHTS_DIR
from dicomnode.store.db import Database, connect
from dicomnode.store.models import ModelState


@pytest.fixture()
def database(tmp_path: Path):
    database = connect(f"sqlite:///{tmp_path / 'node.db'}")
    database.migrate()
    yield database
    database.dispose()


def _states(database: Database) -> dict[int, str]:
    return {row.id: row.state.value for row in registry.list_models(database)}


def test_register_copies_the_weights_out_of_the_repository_and_renames_the_version(tmp_path: Path, database) -> None:
    var = tmp_path / "var"
    row = registry.register(database, var, WEIGHTS_DIR / "default.json", by="trainer", data={"studies": 3})
    assert row.state is ModelState.CANDIDATE and row.created_by == "trainer"
    assert row.version.startswith("site-") and row.version.endswith(row.sha256[:8])
    card = registry.card_path(var, row)
    assert card.is_file() and (var / row.weights_path).is_file() and var in card.parents
    assert json.loads(card.read_text())["version"] == row.version
    assert json.loads(row.data) == {"studies": 3}


def test_register_refuses_weights_that_do_not_match_their_card(tmp_path: Path, database) -> None:
    card = json.loads((WEIGHTS_DIR / "default.json").read_text())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "default.safetensors").write_bytes(b"not the weights")
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(registry.RegistryError, match="does not match"):
        registry.register(database, tmp_path / "var", tmp_path / "m" / "model.json", by="x")


def test_activate_and_rollback_walk_the_log_back_to_the_configured_model(tmp_path: Path, database) -> None:
    var = tmp_path / "var"
    first = registry.register(database, var, WEIGHTS_DIR / "default.json", by="a")
    second = registry.register(database, var, WEIGHTS_DIR / "default.json", by="a")
    assert registry.active(database, var) is None
    registry.activate(database, first.id, by="dr one")
    registry.activate(database, second.id, by="dr two")
    assert _states(database) == {first.id: "retired", second.id: "active"}
    assert registry.active(database, var).version == second.version
    with pytest.raises(registry.RegistryError, match="already active"):
        registry.activate(database, second.id, by="x")
    assert registry.rollback(database, by="dr three") == first.id
    assert _states(database) == {first.id: "active", second.id: "retired"}
    assert registry.rollback(database, by="dr three") is None  # back to [model] weights
    assert registry.active(database, var) is None
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(database, by="dr three")
    log = registry.activations(database)
    assert [(e.action, e.model_id, e.by) for e in log] == [
        ("activate", first.id, "dr one"), ("activate", second.id, "dr two"),
        ("rollback", first.id, "dr three"), ("rollback", None, "dr three")]
    assert all(e.at is not None for e in log)


def test_who_is_plain_text() -> None:
    assert registry.who("Dr. A\n../x;rm") == "Dr. A_.._x_rm"
    with pytest.raises(registry.RegistryError):
        registry.who("  ")


def test_the_worker_model_follows_activation_and_rollback_at_the_next_job(tmp_path: Path, database) -> None:
    var = tmp_path / "var"
    configured = load_segmenter("threshold", "cpu")
    models = ActiveSegmenter(database, var, lambda: configured, lambda card: load_segmenter(str(card), "cpu"))
    assert models.current() is configured
    row = registry.register(database, var, WEIGHTS_DIR / "default.json", by="a")
    registry.activate(database, row.id, by="a")
    segmenter = models.current()
    assert segmenter.algorithm.version == row.version  # the Algorithm Version every result carries
    assert models.current() is segmenter  # loaded once
    registry.rollback(database, by="a")
    assert models.current() is configured
    # a registry entry whose weights are gone: the model in use is kept, the node keeps reading
    broken = registry.register(database, var, WEIGHTS_DIR / "default.json", by="a")
    registry.activate(database, broken.id, by="a")
    registry.card_path(var, broken).unlink()
    assert models.current() is configured

