"""Sections of a model card (preprocessing, operating point, threshold parameters) as frozen
dataclasses: :func:`from_card_section` builds one from the card's JSON object and refuses keys this
code does not know, so a card written by newer code never half-applies (see
:mod:`dicomnode.segmentation.modelcard`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_card_section(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """``cls(**data)``, or :class:`ValueError` naming the unknown keys of the ``what`` section."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; this code knows {sorted(known)}")
    return cls(**data)
