"""Model cards: the JSON that travels with a set of weights, and the checks that refuse a mismatch.

A model is ``<stem>.safetensors`` (the tensors) plus ``<stem>.json`` (the card) beside it; the
network-free ``threshold`` segmenter is a card alone. Card fields (format version 1):

=================  =====================================================================================
``format_version``  1
``task``            what the model does (:data:`TASKS`): ``"planar-lesions"`` (lesion probability per pixel
                    of a whole-body view; the default, so cards written before the field existed read
                    unchanged), ``"anatomy-map"`` (one logit per anatomy label,
                    :mod:`dicomnode.segmentation.anatomy`) or ``"spectct-classes"`` (one logit per class of
                    ``classes`` per voxel of a SPECT/CT or SPECT-only volume, paper 003)
``name``            algorithm name for results (Algorithm Identification, PS3.3 C.8.20.2), e.g. dicomnode-unet
``version``         weights version (Algorithm Version)
``network``         registry name (:func:`dicomnode.segmentation.networks.available`) or ``"threshold"``
``width``           the registry width the tensors were built with (``null`` for ``threshold``)
``in_channels``     network input channels; must equal what ``preprocessing`` (planar tasks) or
                    ``channels`` (``spectct-classes``) produce
``preprocessing``   planar tasks: :class:`dicomnode.segmentation.preprocess.Preprocessing` as a dict (unknown
                    keys refused); absent for ``spectct-classes``
``channels``        ``spectct-classes`` only: the input volumes in order, ``"spect"`` and/or ``"ct"``
``classes``         ``spectct-classes`` only: the class of each output channel, ``"background"`` first
``in_plane_mm``     ``spectct-classes`` only, optional: in-plane spacing the network works at (``null``: the grid's)
``real_scan_validation``  optional: the validation on real scans of its kind the card records (data,
                    exams, figures); ``null``: none, and the node sends its results only where the site allows
                    it (config ``[model] unvalidated_results``)
``weights``         file name of the tensors, beside the card (``null`` for ``threshold``)
``sha256``          hex SHA-256 of that file, verified on load
``threshold``       probability threshold of the binary mask (0.5, papers 001/002)
``operating_point`` optional: :class:`dicomnode.segmentation.postprocess.OperatingPoint` as a dict (peak
                    threshold, minimum area, test-time flip), chosen on validation folds, and
                    optionally ``calibration`` (``slope``, ``intercept``: the probability a reported
                    focus carries, :mod:`dicomnode.segmentation.calibration`)
``parameters``      parameters of a network-free segmenter (``threshold``), else ``{}``
``training``        free-form description of the training data and run
``metrics``         free-form evaluation results (e.g. DSC mean ± std on a named test set)
=================  =====================================================================================

:func:`load_card` and :func:`build_network` raise :class:`ModelCardError` (a ``ValueError``) with a
message that says what does not match: malformed JSON, unknown or missing keys, unsupported format
version, unknown network, unknown preprocessing keys, ``in_channels`` inconsistent with the
preprocessing or channels, classes that do not fit the task, a window the network cannot take, a
missing weights file, a SHA-256 mismatch, or
tensors that do not fit the network the card describes (``load_state_dict(strict=True)``).
:func:`save_model` writes weights and card together so that they always agree.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dicomnode.segmentation.anatomy import LABEL_COUNT
from dicomnode.segmentation.networks import SegmentationNetwork, available, build
from dicomnode.segmentation.postprocess import OperatingPoint
from dicomnode.segmentation.preprocess import Preprocessing

FORMAT_VERSION = 1
THRESHOLD_NETWORK = "threshold"
PLANAR_LESIONS = "planar-lesions"
ANATOMY_MAP = "anatomy-map"
SPECTCT_CLASSES = "spectct-classes"
#: Each task and the logit channels its network must return (``None``: one per class of the card).
TASKS: dict[str, int | None] = {PLANAR_LESIONS: 1, ANATOMY_MAP: LABEL_COUNT, SPECTCT_CLASSES: None}
#: Tasks whose input is a planar view prepared by ``preprocessing``; the others read ``channels``.
PLANAR_TASKS = frozenset({PLANAR_LESIONS, ANATOMY_MAP})
#: The input volumes a ``spectct-classes`` model may read (:mod:`dicomnode.segmentation.spectct`).
VOLUME_CHANNELS = ("spect", "ct")


class ModelCardError(ValueError):
    """A model card or weights file that this code cannot use as it stands."""


@dataclass(frozen=True)
class ModelCard:
    """A parsed, validated model card; ``path`` is where it was read from (not serialised)."""

    name: str
    version: str
    network: str
    in_channels: int
    preprocessing: Preprocessing | None = None  # planar tasks only
    width: str | int | None = None
    weights: str | None = None
    sha256: str | None = None
    threshold: float = 0.5
    operating_point: OperatingPoint = field(default_factory=OperatingPoint)
    parameters: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    task: str = PLANAR_LESIONS
    channels: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    in_plane_mm: float | None = None
    real_scan_validation: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def outputs(self) -> int:
        """The logit channels the task's network returns."""
        return TASKS[self.task] or len(self.classes)

    @property
    def validated_on_real_scans(self) -> bool:
        return bool(self.real_scan_validation)

    @property
    def weights_path(self) -> Path | None:
        """The tensors file beside the card, if any."""
        if self.weights is None:
            return None
        base = self.path.parent if self.path is not None else Path(".")
        return base / self.weights

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        data["operating_point"] = self.operating_point.to_dict()
        if self.preprocessing is not None:
            data["preprocessing"] = self.preprocessing.to_dict()
        else:
            del data["preprocessing"]
        if self.task in PLANAR_TASKS:
            for key in _VOLUME_KEYS:
                del data[key]
        else:
            data["channels"], data["classes"] = list(self.channels), list(self.classes)
        return data

    def save(self, path: Path) -> ModelCard:
        """Write the card as JSON; returns the card with ``path`` set."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return replace(self, path=path)


_REQUIRED = ("format_version", "name", "version", "network", "in_channels")
_KNOWN = {f.name for f in fields(ModelCard)} - {"path"}
#: Keys of a ``spectct-classes`` card that a planar card does not have.
_VOLUME_KEYS = ("channels", "classes", "in_plane_mm")


def card_path_for(path: Path) -> Path:
    """The card of a model given as its ``.json`` card or its ``.safetensors`` weights."""
    path = Path(path)
    if path.suffix == ".json":
        return path
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    raise ModelCardError(f"{path}: a model is a .safetensors file with its .json card, or a .json card")


def load_card(path: Path) -> ModelCard:
    """Read and validate a card (given as the ``.json`` or the ``.safetensors`` beside it)."""
    card_path = card_path_for(path)
    try:
        data = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model card {card_path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"{card_path}: not valid JSON ({exc})") from exc
    card = parse_card(data, card_path)
    if card.weights is not None and Path(path).suffix == ".safetensors" and Path(path).name != card.weights:
        raise ModelCardError(f"{card_path} describes weights {card.weights!r}, not {Path(path).name!r}")
    return card


def parse_card(data: Any, where: Path | None = None) -> ModelCard:
    """Validate a card's JSON object against this code (no file access)."""
    label = str(where) if where is not None else "model card"
    if not isinstance(data, Mapping):
        raise ModelCardError(f"{label}: a model card is a JSON object")
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ModelCardError(f"{label}: unknown key(s) {unknown}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ModelCardError(f"{label}: missing key(s) {missing}")
    if data["format_version"] != FORMAT_VERSION:
        raise ModelCardError(
            f"{label}: format_version {data['format_version']!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    for key in ("name", "version", "network"):
        if not isinstance(data[key], str) or not data[key]:
            raise ModelCardError(f"{label}: {key} must be a non-empty string, got {data[key]!r}")
    task = data.get("task", PLANAR_LESIONS)
    if task not in TASKS:
        raise ModelCardError(f"{label}: task {task!r} is not one of {sorted(TASKS)}")
    network = data["network"]
    if network != THRESHOLD_NETWORK and network not in available():
        raise ModelCardError(
            f"{label}: unknown network {network!r}; this code has "
            f"{', '.join([*available(), THRESHOLD_NETWORK])}"
        )
    inputs = _planar_inputs(data, label) if task in PLANAR_TASKS else _volume_inputs(data, label)
    threshold = data.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1 or math.isnan(threshold):
        raise ModelCardError(f"{label}: threshold {threshold!r} must be a number in (0, 1)")
    for key in ("parameters", "training", "metrics", "operating_point"):
        if not isinstance(data.get(key, {}), Mapping):
            raise ModelCardError(f"{label}: {key} must be a JSON object")
    try:
        point = OperatingPoint.from_dict(data.get("operating_point", {}))
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"{label}: {exc}") from exc
    has_weights = data.get("weights") is not None
    if (network == THRESHOLD_NETWORK) == has_weights:
        raise ModelCardError(
            f"{label}: network {network!r} "
            + ("takes no weights file" if has_weights else "needs a weights file ('weights', 'sha256')")
        )
    if has_weights and not isinstance(data.get("sha256"), str):
        raise ModelCardError(f"{label}: sha256 of the weights file is missing")
    if has_weights and Path(data["weights"]).name != data["weights"]:
        raise ModelCardError(f"{label}: weights must be a file name beside the card, got {data['weights']!r}")
    if not isinstance(data.get("real_scan_validation") or {}, Mapping):
        raise ModelCardError(f"{label}: real_scan_validation must be a JSON object or null")
    return ModelCard(**{**data, **inputs, "threshold": float(threshold), "operating_point": point}, path=where)


def _planar_inputs(data: Mapping[str, Any], label: str) -> dict[str, Any]:
    """A planar card's ``preprocessing``, checked against ``in_channels``; volume keys refused."""
    present = sorted(key for key in _VOLUME_KEYS if key in data)
    if present:
        raise ModelCardError(f"{label}: {present} belong to a {SPECTCT_CLASSES!r} card, not a planar one")
    if not isinstance(data.get("preprocessing"), Mapping):
        raise ModelCardError(f"{label}: a planar card needs preprocessing, a JSON object")
    try:
        preprocessing = Preprocessing.from_dict(data["preprocessing"])
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"{label}: {exc}") from exc
    if data["in_channels"] != preprocessing.in_channels:
        raise ModelCardError(
            f"{label}: in_channels {data['in_channels']!r} but aggregation {preprocessing.aggregation!r} "
            f"gives {preprocessing.in_channels} channel(s)"
        )
    return {"preprocessing": preprocessing}


def _volume_inputs(data: Mapping[str, Any], label: str) -> dict[str, Any]:
    """A ``spectct-classes`` card's channels, classes and in-plane spacing (no ``preprocessing``)."""
    if "preprocessing" in data:
        raise ModelCardError(f"{label}: a {SPECTCT_CLASSES!r} card reads channels, not preprocessing")
    channels, classes = data.get("channels"), data.get("classes")
    if (not isinstance(channels, list) or not channels or len(set(channels)) != len(channels)
            or any(c not in VOLUME_CHANNELS for c in channels)):
        raise ModelCardError(f"{label}: channels must be distinct names from {VOLUME_CHANNELS}, got {channels!r}")
    if (not isinstance(classes, list) or len(classes) < 2 or classes[0] != "background"
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        raise ModelCardError(f"{label}: classes must be distinct names, 'background' first, got {classes!r}")
    if data["in_channels"] != len(channels):
        raise ModelCardError(f"{label}: in_channels {data['in_channels']!r} but {len(channels)} channel(s)")
    spacing = data.get("in_plane_mm")
    if spacing is not None and (not isinstance(spacing, (int, float)) or not 0 < spacing < 100):
        raise ModelCardError(f"{label}: in_plane_mm {spacing!r} must be null or a spacing in mm")
    return {"channels": tuple(channels), "classes": tuple(classes),
            "in_plane_mm": None if spacing is None else float(spacing)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_network(card: ModelCard, device: torch.device | str = "cpu") -> SegmentationNetwork:
    """The card's network with its weights loaded (strictly), in eval mode, on ``device``."""
    if card.network == THRESHOLD_NETWORK:
        raise ModelCardError("the threshold segmenter has no network to build")
    weights = card.weights_path
    assert weights is not None  # parse_card guarantees it for networks
    if not weights.is_file():
        raise ModelCardError(f"weights file {weights} named by the card does not exist")
    actual = sha256_of(weights)
    if actual != card.sha256:
        raise ModelCardError(
            f"{weights}: sha256 {actual} does not match the card's {card.sha256} "
            "(weights replaced or corrupted)"
        )
    try:
        net = build(card.network, in_channels=card.in_channels, width=card.width)
    except ValueError as exc:
        raise ModelCardError(f"card {card.path}: {exc}") from exc
    _check_window(card, net)
    _check_task(card, net)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise ModelCardError(f"{weights}: not a readable safetensors file ({exc})") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelCardError(
            f"{weights}: the tensors do not fit network {card.network!r} with width {card.width!r} "
            f"and in_channels {card.in_channels} as the card says; {_first_lines(exc)}"
        ) from exc
    return net.to(device).eval()


def save_model(
    net: SegmentationNetwork,
    path: Path,
    *,
    name: str,
    version: str,
    network: str,
    preprocessing: Preprocessing | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    task: str = PLANAR_LESIONS,
    **inputs: Any,
) -> ModelCard:
    """Write ``<path>.safetensors`` and its card ``<path>.json``; return the card (validated).
    ``inputs`` are a ``spectct-classes`` card's ``channels``, ``classes`` and ``in_plane_mm``."""
    path = Path(path).with_suffix(".safetensors")
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in net.state_dict().items()}
    save_file(state, path)
    card = ModelCard(
        name=name,
        version=version,
        network=network,
        width=net.width,
        in_channels=net.in_channels,
        preprocessing=preprocessing,
        weights=path.name,
        sha256=sha256_of(path),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        task=task,
        **inputs,
    )
    parse_card(card.to_dict())  # refuse to write a card this code could not read back
    _check_window(card, net)
    _check_task(card, net)
    return card.save(path.with_suffix(".json"))


def update_card(path: Path, **changes: Any) -> ModelCard:
    """Rewrite a saved card with some fields changed (e.g. the operating point and metrics chosen
    after training); the weights and their SHA-256 are untouched. Returns the card read back."""
    card = load_card(Path(path))
    assert card.path is not None
    unknown = sorted(set(changes) - _KNOWN)
    if unknown:
        raise ModelCardError(f"unknown card field(s) {unknown}")
    updated = replace(card, **changes)
    parse_card(updated.to_dict())
    return updated.save(card.path)


def _check_window(card: ModelCard, net: SegmentationNetwork) -> None:
    if card.preprocessing is None:
        return
    window = card.preprocessing.window
    if net.window is not None and window != net.window:
        raise ModelCardError(
            f"network {card.network!r} takes only {net.window}×{net.window} windows but the card's "
            f"preprocessing window is {window}"
        )
    if window is not None and window % net.size_divisor:
        raise ModelCardError(
            f"preprocessing window {window} is not a multiple of network {card.network!r}'s "
            f"size_divisor {net.size_divisor}"
        )


def _check_task(card: ModelCard, net: SegmentationNetwork) -> None:
    if net.classes != card.outputs:
        raise ModelCardError(
            f"network {card.network!r} returns {net.classes} logit channel(s); task {card.task!r} "
            f"needs {card.outputs}"
        )


def _first_lines(exc: Exception, lines: int = 4) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:lines])
