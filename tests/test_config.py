"""Configuration: TOML file, DICOMNODE_* overrides, clear errors (docs/architecture.md, "Operations")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from dicomnode.config import ConfigError, NodeConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "node.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DICOMNODE_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        keys.add(prefix + key)
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys |= _keys(candidate, f"{prefix}{key}.")
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    keys |= _keys(inner, f"{prefix}{key}.")
    return keys


def test_shipped_file_documents_every_key_and_holds_the_defaults() -> None:
    text = SHIPPED.read_text()
    # A key is documented when it appears as "key =" or as a [table] header, set or commented out.
    written = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.M))
    tables = set(re.findall(r"^#?\s*\[\[?([a-z_.]+)\]\]?", text, flags=re.M))
    for dotted in _keys(NodeConfig):
        assert dotted in tables or dotted.rsplit(".", 1)[-1] in written, f"{dotted} is not in node.toml"
    shipped = load_config(SHIPPED)
    defaults = NodeConfig()
    for section in ("node", "assembly", "queue", "model", "results", "export", "logging", "http"):
        assert getattr(shipped, section) == getattr(defaults, section), section
    assert shipped.storage.min_free_bytes == defaults.storage.min_free_bytes
    # var_dir = "../var" is relative to config/, i.e. the repository's var/
    assert shipped.storage.var_dir == REPO / "config" / ".." / "var"
    assert shipped.database_url == f"sqlite:///{(REPO / 'var' / 'dicomnode.db').resolve()}"
    assert shipped.storage.spool_path == shipped.storage.var_dir / "spool"
    assert tomllib.loads(text)["node"]["ae_title"] == shipped.node.ae_title


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, '[node]\nae_title = "FILE_AE"\nport = 4000\n[storage]\nmin_free_bytes = 10\n')
    monkeypatch.setenv("DICOMNODE_NODE__PORT", "4001")
    monkeypatch.setenv("DICOMNODE_NODE__ALLOWED_CALLERS", '["CAM1", "CAM2"]')
    monkeypatch.setenv("DICOMNODE_DATABASE__URL", "postgresql+psycopg://u@h/db")
    config = load_config(path)
    assert config.node.ae_title == "FILE_AE"  # from the file
    assert config.node.port == 4001  # the environment wins
    assert config.node.allowed_callers == ["CAM1", "CAM2"]
    assert config.storage.min_free_bytes == 10
    assert config.database_url == "postgresql+psycopg://u@h/db"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, '[node]\nae_title = "FROM_ENV_FILE"\n')
    monkeypatch.setenv("DICOMNODE_CONFIG", str(path))
    assert load_config().node.ae_title == "FROM_ENV_FILE"
    assert load_config(SHIPPED).node.ae_title == "DICOMNODE"  # an explicit path wins


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    path = _write(tmp_path, '[storage]\nvar_dir = "state"\n[node.tls]\ncert = "tls/a.crt"\nkey = "tls/a.key"\n'
                            '[model]\nweights = "w/model.safetensors"\n[model.spectct]\nweights = "w/spectct.json"\n')
    config = load_config(path)
    assert config.storage.var_dir == tmp_path / "state"
    assert config.storage.spool_path == tmp_path / "state" / "spool"
    assert config.node.tls is not None and config.node.tls.cert == tmp_path / "tls" / "a.crt"
    assert config.model.weights == str(tmp_path / "w" / "model.safetensors")
    assert config.model.spectct.weights == str(tmp_path / "w" / "spectct.json")
    assert config.model.anatomy.weights == config.model.spect_only.weights == "default"
    assert config.database_url == f"sqlite:///{tmp_path / 'state' / 'dicomnode.db'}"


def test_destinations(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[destinations]]\nname = "pacs"\nhost = "10.0.0.1"\nport = 104\nae_title = "PACS"\n'
                            '[[destinations]]\nname = "viewer"\nhost = "10.0.0.2"\nport = 11112\nae_title = "VIEW"\n')
    config = load_config(path)
    assert [d.name for d in config.destinations] == ["pacs", "viewer"]
    assert config.destination("viewer").port == 11112
    with pytest.raises(KeyError, match="pacs"):
        config.destination("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[node]\nae_title = "A_TITLE_LONGER_THAN_16"\n', r"node\.ae_title: .*not a valid AE title"),
        ('[node]\nae_title = "BACK\\\\SLASH"\n', r"node\.ae_title"),
        ('[node]\nae_title = "   "\n', r"node\.ae_title"),
        ('[node]\nallowed_callers = ["OK", ""]\n', r"node\.allowed_callers\.1"),
        ("[node]\nport = 70000\n", r"node\.port: Input should be less than or equal to 65535"),
        ("[node]\nprot = 104\n", r"node\.prot: unknown key"),
        ("[nodes]\nport = 104\n", r"nodes: unknown key"),
        ("[storage]\nmin_free_bytes = -5\n", r"storage\.min_free_bytes"),
        ('[node.tls]\ncert = "a"\nkey = "b"\nrequire_client_cert = true\n', r"node\.tls: .*needs 'ca'"),
        ('[database]\nurl = "mysql://x/y"\n', r"database\.url: .*unsupported database URL 'mysql'"),
        ('[model]\ndevice = "tpu"\n', r"model\.device"),
        ('[model.spectct]\nweights = "model.pt"\n', r"model\.spectct\.weights: .*model card"),
        ('[model.spect_only]\nwieghts = "default"\n', r"model\.spect_only\.wieghts: unknown key"),
        ('[model.ct_only]\nweights = "default"\n', r"model\.ct_only: unknown key"),
        ("[learn]\nfolds = 1\n", r"learn\.folds: .*0 \(no cross-validation\) or at least 2"),
        ('[results]\nkinds = ["SEG", "SEG"]\n', r"results\.kinds: .*once"),
        ('[results]\nkinds = ["XRAY"]\n', r"results\.kinds\.0"),
        ("[export]\nbackoff_initial_seconds = 60\nbackoff_max_seconds = 5\n", r"export: .*backoff_max_seconds"),
        ('[[destinations]]\nname = "a"\nhost = "h"\nport = 1\nae_title = "X"\n'
         '[[destinations]]\nname = "a"\nhost = "h"\nport = 2\nae_title = "Y"\n', r"destinations: .*repeated: a"),
        ('[[destinations]]\nname = "a/../b"\nhost = "h"\nport = 1\nae_title = "X"\n', r"destinations\.0\.name"),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(expected, message), message


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_NODE__MAX_ASSOCIATIONS", "zero")
    with pytest.raises(ConfigError, match=r"node\.max_associations.*environment variable DICOMNODE_NODE__MAX_ASSOCIATIONS"):
        load_config()


def test_an_environment_value_is_blamed_on_the_variable_not_the_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "[node]\nport = 11112\n")
    monkeypatch.setenv("DICOMNODE_NODE__PORT", "abc")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert re.search(r"node\.port: .*\(from environment variable DICOMNODE_NODE__PORT\)", str(info.value))
    assert f"file {path}" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('# the node\n[node]\nae_title = "X"\nport = "abc"\n', r"node\.port: .* line 4\)"),
        ('[node] # ours\n\nallowed_callers = ["OK", ""]\n', r"node\.allowed_callers\.1: .*line 3\)"),
        ('[[destinations]]\nname = "a"\nhost = "h"\nport = 1\nae_title = "X"\n\n'
         '[[destinations]]\nname = "b"\nhost = "h"\nport = 99999\nae_title = "Y"\n', r"destinations\.1\.port: .*line 10\)"),
        ('[storage]\nmin_free_bytes = 1\n[node.tls]\ncert = "a"\nkey = "b"\nrequire_client_cert = true\n',
         r"node\.tls: .*line 3\)"),
        ('title = "x"\nnode.port = "x"\n', r"node\.port: .*line 2\)"),
    ],
)
def test_a_bad_value_in_the_file_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert re.search(expected.replace("line", rf"\(from file {re.escape(str(path))}, line"), str(info.value)), str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[node\nport = 1\n"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_results_section_is_the_result_options(tmp_path: Path) -> None:
    from dicomnode import __version__
    from dicomnode.pipeline.results import ResultOptions

    assert NodeConfig().results == ResultOptions() and ResultOptions().software_version == __version__
    path = _write(tmp_path, '[results]\nkinds = ["SEG", "SR"]\nseries_number_base = 500\n'
                            'institution_name = "Nuclear Medicine"\n[results.descriptions]\nSEG = "Metastases (AI)"\n')
    options = load_config(path).results
    assert isinstance(options, ResultOptions)
    assert [kind.value for kind in options.kinds] == ["SEG", "SR"]
    assert options.series_number_base == 500 and options.institution_name == "Nuclear Medicine"
    kinds = {kind.value: kind for kind in ResultOptions().kinds}
    assert options.description(kinds["SEG"]) == "Metastases (AI)"
    assert options.description(kinds["SR"]) == ResultOptions().description(kinds["SR"])  # not overridden


def test_result_texts_are_checked_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, '[results.descriptions]\nSEG = "' + "x" * 65 + '"\n')
    with pytest.raises(ConfigError, match=r"results\.descriptions\.SEG: .*64 characters"):
        load_config(path)
