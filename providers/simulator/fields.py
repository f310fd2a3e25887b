"""Strict readers for control-API JSON, so that a typo in a test's job spec fails loudly (400)
instead of silently simulating something else."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


class SpecError(ValueError):
    """A job or fault description the simulator refuses; the message names the field."""


def as_object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SpecError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def check_keys(data: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"unknown {what} field(s): {', '.join(unknown)}")


def get_int(data: Mapping[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{key} must be >= {minimum}, got {value}")
    return value


def get_float(
    data: Mapping[str, Any],
    key: str,
    default: float,
    minimum: float = 0.0,
    maximum: float = math.inf,
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{key} must be a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise SpecError(f"{key} must be between {minimum:g} and {maximum:g}, got {value}")
    return float(value)


def get_str(data: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise SpecError(f"{key} must be a non-empty string, got {value!r}")
    return value


def get_str_list(data: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)
