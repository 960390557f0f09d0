"""The node's configuration: one TOML file, overridable by ``DICOMNODE_*`` environment variables.

Configuration and its validation at start are described in docs/architecture.md, "Operations". The
DICOM tables (AE titles, TLS, destinations) are defined in :mod:`dicomnode.dicom.peers`; apart from
those and :class:`~dicomnode.dicom.sop.ResultKind` this module imports nothing of the node, so
every part can read it.

API (stable; other modules depend on it)::

    config = load_config(path)            # path, or None: $DICOMNODE_CONFIG, or built-in defaults
    config.node.ae_title, config.node.port, config.node.allowed_callers, config.node.tls
    config.storage.spool_path             # resolved spool root (var_dir/spool unless spool_dir is set)
    config.database.url                   # resolved SQLAlchemy URL (sqlite in var_dir by default)
    config.destinations                   # list[Destination]; config.destination(name)
    config.results                        # ResultOptions: what the result builders write

Precedence, highest first: ``DICOMNODE_<SECTION>__<KEY>`` environment variables (nested with ``__``,
e.g. ``DICOMNODE_NODE__PORT=11113``; lists and tables as JSON, e.g.
``DICOMNODE_NODE__ALLOWED_CALLERS='["CAMERA1"]'``), then the TOML file, then the defaults below.
Every key is documented in ``config/node.toml``. Unknown keys are errors (a typo must not silently
fall back to a default). Validation failures raise :class:`ConfigError` whose message lists every
bad key with its dotted location, so ``dicomnode serve`` can print it and exit.

Relative paths written in the file (``var_dir``, ``spool_dir``, TLS files, weights) are resolved
against the directory of the TOML file; relative paths from the environment and the defaults
(``var_dir = "var"``) against the working directory.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomnode import __version__
from dicomnode.dicom.peers import AETitle, Destination, Port, TLSServer
from dicomnode.dicom.sop import ResultKind

CONFIG_ENV = "DICOMNODE_CONFIG"
ENV_PREFIX = "DICOMNODE_"


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad key and why."""


def _long_string(value: str) -> str:
    """A value for a LO attribute (PS3.5 §6.2): at most 64 characters, no backslash."""
    if len(value) > 64 or "\\" in value:
        raise ValueError("must be at most 64 characters without a backslash (VR LO, PS3.5 §6.2)")
    return value


LongString = Annotated[str, AfterValidator(_long_string)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    ae_title: AETitle = "DICOMNODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    allowed_callers: list[AETitle] = Field(default_factory=list)  # empty: accept any calling AE
    max_associations: int = Field(default=10, ge=1, le=1000)
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=30.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)
    # Largest P-DATA PDU we accept (PS3.8 D.1 Maximum Length Sub-Item); 0 = no limit.
    max_pdu_size: int = Field(default=1 << 20, ge=0)
    tls: TLSServer | None = None


class StorageSection(_Section):
    var_dir: Path = Path("var")
    spool_dir: Path | None = None  # default: <var_dir>/spool
    min_free_bytes: int = Field(default=1 << 30, ge=0)  # below this, C-STORE answers 0xA700

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.var_dir / "spool"


class DatabaseSection(_Section):
    url: str | None = None  # default: sqlite:///<var_dir>/dicomnode.db

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"unsupported database URL {value.split(':', 1)[0]!r}: use sqlite:/// or postgresql+psycopg://")
        return value


class AssemblySection(_Section):
    quiet_seconds: float = Field(default=10.0, ge=0)


class QueueSection(_Section):
    """Jobs and workers (:class:`dicomnode.pipeline.queue.QueuePolicy` has the rules)."""

    lease_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)  # attempts ending in an error; a lost worker is not one
    poll_seconds: float = Field(default=1.0, gt=0)
    # poison pill: a job that lost its worker this many times within the window ends failed
    max_worker_losses: int = Field(default=5, ge=1)
    worker_loss_window_seconds: float = Field(default=3600.0, gt=0)
    # a job given back for want of disk space or database waits this long before it is tried again
    environment_retry_seconds: float = Field(default=15.0, gt=0)


class TaskModelSection(_Section):
    """One more model the node runs (:mod:`dicomnode.pipeline.models`): the shipped one or a path."""

    weights: str = Field(default="default", min_length=1)  # "default" or a model card / .safetensors path

    @field_validator("weights")
    @classmethod
    def _model_file(cls, value: str) -> str:
        if value != "default" and Path(value).suffix not in (".json", ".safetensors"):
            raise ValueError('must be "default" or a model card (.json) or weights (.safetensors) path')
        return value


class AnatomyModelSection(TaskModelSection):
    """``[model.anatomy]``: the anatomy map, and whether the shipped learned second stage judges the
    lesion model's candidates (false: the fixed rules alone; docs/segmentation.md, "Anatomy map and
    second stage")."""

    second_stage: bool = True


class ModelSection(_Section):
    """Every model the node runs: the planar lesion model here, the others in their own table."""

    weights: str = "default"  # a .safetensors path, "default" (shipped weights) or "threshold"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # None: the model card's own operating point; a number is a site override, logged as one
    threshold: float | None = Field(default=None, gt=0, lt=1)
    # send results of models whose card records no validation on real scans (SPECT-only, SPECT/CT)
    unvalidated_results: bool = False
    anatomy: AnatomyModelSection = Field(default_factory=AnatomyModelSection)  # reads the planar lesions
    spectct: TaskModelSection = Field(default_factory=TaskModelSection)  # SPECT/CT acquisitions
    spect_only: TaskModelSection = Field(default_factory=TaskModelSection)  # SPECT volumes without a CT


#: Series Description (0008,103E) of each kind's series unless ``[results.descriptions]`` names one.
DEFAULT_SERIES_DESCRIPTIONS: dict[ResultKind, str] = {
    ResultKind.SEG: "AI bone metastases SEG",
    ResultKind.GSPS: "AI bone metastases contours",
    ResultKind.SR: "AI bone metastases report",
    ResultKind.SC: "AI bone metastases overlay",
}


class ResultOptions(_Section):
    """``[results]``: which result objects to write and how to label them (docs/conformance.md).

    The one options type of the section: the configuration reads it and the result builders
    (:mod:`dicomnode.pipeline.results`) take it. ``descriptions`` may name only some kinds; the others
    keep :data:`DEFAULT_SERIES_DESCRIPTIONS`. ``device_serial_number`` defaults to the host name,
    which tells which worker wrote an object.
    """

    kinds: tuple[ResultKind, ...] = tuple(ResultKind)
    series_number_base: int = Field(default=9000, ge=0, le=2**31 - 1 - 10_000)  # IS, room for 10000 series
    series_descriptions: dict[ResultKind, LongString] = Field(default_factory=dict, alias="descriptions")
    manufacturer: LongString = Field(default="dicomnode", min_length=1)
    software_version: LongString = Field(default=__version__, min_length=1)
    institution_name: LongString | None = None
    device_serial_number: LongString | None = None  # default: the host name

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("kinds")
    @classmethod
    def _unique(cls, values: tuple[ResultKind, ...]) -> tuple[ResultKind, ...]:
        if len(set(values)) != len(values):
            raise ValueError("each result kind may be listed once")
        return values

    def description(self, kind: ResultKind) -> str:
        """The Series Description (0008,103E) of ``kind``'s series."""
        return self.series_descriptions.get(kind, DEFAULT_SERIES_DESCRIPTIONS[kind])

    def serial_number(self) -> str:
        """Device Serial Number (0018,1000) of the writing node."""
        return self.device_serial_number or socket.gethostname()[:64] or "unknown"


class ExportSection(_Section):
    backoff_initial_seconds: float = Field(default=5.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)
    # transient failures retry forever (capped back-off); status flags a destination failing this long
    attention_after_seconds: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> ExportSection:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_initial_seconds")
        return self


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(default=False, alias="json")
    include_patient_data: bool = False  # Patient ID, Accession Number in the log (dicomnode.ops.logs)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class RetentionSection(_Section):
    """Deleting delivered studies' files from the spool (:mod:`dicomnode.store.retention`)."""

    enabled: bool = True
    delete_after_hours: float = Field(default=720.0, ge=0)  # after every result of the study was delivered
    early_free_bytes: int = Field(default=2 << 30, ge=0)  # free space above the floor that starts early deletion
    interval_seconds: float = Field(default=300.0, gt=0)  # how often ``serve`` looks
    # a study with a site label (a correction, dicomnode.learn) or a correction not examined yet keeps its files
    keep_labelled: bool = True


class LimitsSection(_Section):
    """Memory for decoding received data sets (:mod:`dicomnode.dicom.budget`, docs/conformance.md)."""

    decoded_bytes_per_instance: int = Field(default=256 << 20, ge=1 << 20)  # inflated data set or decoded pixels
    decoded_bytes_per_node: int = Field(default=1 << 30, ge=1 << 20)  # all associations at once


class LearnSection(_Section):
    """The site's own model (:mod:`dicomnode.learn`, docs/training.md "The site's own model")."""

    # an untouched result of a processed study counts as a label (the site reviews every result)
    reviewed_results_count: bool = False
    preset: str = "site"  # config/train/<preset>.toml, or a path to a preset
    threads: int = Field(default=1, ge=1)  # torch threads of `dicomnode learn` (its share of the CPU)
    held_out_percent: int = Field(default=30, ge=5, le=80)  # patients (by hash of Patient ID) kept for the gate
    bootstrap: int = Field(default=1000, ge=100)  # patient-level resamples of the gate's confidence interval
    max_extra_false_positives: float = Field(default=0.5, ge=0)  # per study, estimate of the difference
    # patient folds of the training studies for the operating point and a cross-validated estimate
    # (dicomnode.learn.crossval); each fold trains one more model; 0: the candidate's own maps
    folds: int = Field(default=3, ge=0, le=10)

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("folds is 0 (no cross-validation) or at least 2")
        return value


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: Port | None = None  # health and Prometheus metrics; None: off


class NodeConfig(BaseSettings):
    """The whole configuration; see ``config/node.toml`` for every key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False,
    )

    node: NodeSection = Field(default_factory=NodeSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    assembly: AssemblySection = Field(default_factory=AssemblySection)
    queue: QueueSection = Field(default_factory=QueueSection)
    model: ModelSection = Field(default_factory=ModelSection)
    results: ResultOptions = Field(default_factory=ResultOptions)
    destinations: list[Destination] = Field(default_factory=list)
    export: ExportSection = Field(default_factory=ExportSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    http: HttpSection = Field(default_factory=HttpSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    learn: LearnSection = Field(default_factory=LearnSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first (highest priority), then the TOML file's values passed as init kwargs.
        return (env_settings, init_settings)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, values: list[Destination]) -> list[Destination]:
        names = [d.name for d in values]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        return values

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL to use: the configured one or SQLite in ``var_dir``."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.var_dir / 'dicomnode.db').resolve()}"

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; ``KeyError`` with the known names otherwise."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(f"no destination named {name!r}; configured: {[d.name for d in self.destinations]}")


_RELATIVE_PATHS = {
    "storage": ("var_dir", "spool_dir"),
}


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Resolve relative paths of the TOML file against its directory (in place)."""

    def fix(table: dict[str, Any], key: str) -> None:
        value = table.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            table[key] = str(base / value)

    for section, keys in _RELATIVE_PATHS.items():
        table = data.get(section)
        if isinstance(table, dict):
            for key in keys:
                fix(table, key)
    node_tls = (data.get("node") or {}).get("tls") if isinstance(data.get("node"), dict) else None
    if isinstance(node_tls, dict):
        for key in ("cert", "key", "ca"):
            fix(node_tls, key)
    for dest in data.get("destinations") or []:
        if isinstance(dest, dict) and isinstance(dest.get("tls"), dict):
            for key in ("cert", "key", "ca"):
                fix(dest["tls"], key)
    model = data.get("model")
    if isinstance(model, dict) and model.get("weights") not in (None, "default", "threshold"):
        fix(model, "weights")
    for task in ("anatomy", "spectct", "spect_only"):
        table = model.get(task) if isinstance(model, dict) else None
        if isinstance(table, dict) and table.get("weights") not in (None, "default"):
            fix(table, "weights")


def _source(location: tuple[Any, ...], file: Path | None, data: dict[str, Any]) -> str:
    """Where a key's value came from: the environment variable that set it, else the file, else the
    built-in default (an environment variable wins over the file, as pydantic-settings applies them)."""
    keys = [str(part) for part in location if not isinstance(part, int)]
    for depth in range(len(keys), 0, -1):
        variable = ENV_PREFIX + "__".join(keys[:depth]).upper()
        if any(name.upper() == variable for name in os.environ):
            return f"environment variable {variable}"
    if file is not None:
        table: Any = data
        for part in location:
            try:
                table = table[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            line = _line_of(file, location)
            return f"file {file}" + (f", line {line}" if line else "")
    return "built-in default" if file is None else f"file {file} or built-in default"


def _line_of(file: Path, location: tuple[Any, ...]) -> int | None:
    """The line of ``file`` that sets ``location`` (a pydantic error location such as
    ``("destinations", 1, "port")``), or of the nearest table or key above it; None if not found.

    A reading of the TOML lines good enough to point a person at one: ``[table]`` and
    ``[[array.of.tables]]`` headers and ``key = value`` lines with bare or quoted, possibly dotted,
    keys (tomllib, which read the file, keeps no positions).
    """
    wanted = [part if isinstance(part, int) else str(part) for part in location]
    table: list[Any] = []
    path: list[Any]
    counts: dict[tuple[Any, ...], int] = {}
    best: tuple[int, int] | None = None  # (parts matched, line)

    def keys(text: str) -> list[str]:
        return [part.strip().strip("\"'") for part in text.split(".")]

    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith("[[") and "]]" in line:
            name = tuple(keys(line[2:line.index("]]")]))
            counts[name] = counts.get(name, -1) + 1
            table = path = [*name, counts[name]]
        elif line.startswith("[") and "]" in line:
            table = path = keys(line[1:line.index("]")])
        elif "=" in line and not line.startswith("#"):
            path = [*table, *keys(line.split("=", 1)[0])]
        else:
            continue
        matched = 0
        while matched < min(len(path), len(wanted)) and path[matched] == wanted[matched]:
            matched += 1
        if matched == len(path) and matched and (best is None or matched > best[0]):
            best = (matched, number)
    return best[1] if best else None


def _format(error: ValidationError, file: Path | None, data: dict[str, Any]) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against config/node.toml)"
        lines.append(f"  {where}: {message} (from {_source(tuple(item['loc']), file, data)})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None) -> NodeConfig:
    """Read and validate the configuration.

    ``path`` wins over ``$DICOMNODE_CONFIG``; with neither, the built-in defaults (plus any
    ``DICOMNODE_*`` variables) are used. Raises :class:`ConfigError` with a readable message.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data: dict[str, Any] = {}
    file: Path | None = None
    if path is not None:
        file = Path(path)
        try:
            with file.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {file} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"configuration file {file} is a directory") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {file} is not valid TOML: {exc}") from None
        _resolve_relative(data, file.resolve().parent)
    try:
        return NodeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, file, data)) from None
