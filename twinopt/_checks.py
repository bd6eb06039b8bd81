"""Argument checks shared by torch_opt and jax_opt, so both packages word errors identically.

Every check names the argument (as the calling package spells it) and the offending value:
``Invalid lr: -0.1 (must be >= 0)``. Values that cannot be read as one number right now
(a JAX tracer inside ``jit`` / ``inject_hyperparams``, a multi-element array) are not
checked: they are validated where they are concrete, and never make a traced function fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def concrete(value: Any) -> float | None:
    """``float(value)`` when ``value`` is a concrete single number, else ``None``."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except Exception:  # tracers, multi-element arrays, non-numbers
        return None


def fail(name: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value!r} (must be {rule})")


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value >= 0`` (NaN fails)."""
    v = concrete(value)
    if v is not None and not v >= 0.0:
        raise fail(name, v, ">= 0")


def check_positive(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (NaN fails)."""
    v = concrete(value)
    if v is not None and not v > 0.0:
        raise fail(name, v, "> 0")


def check_decay(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (an EMA decay; NaN fails)."""
    v = concrete(value)
    if v is not None and not 0.0 <= v < 1.0:
        raise fail(name, v, "in [0, 1)")


def check_fraction(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1`` (NaN fails)."""
    v = concrete(value)
    if v is not None and not 0.0 <= v <= 1.0:
        raise fail(name, v, "in [0, 1]")


def check_same_shape(name: str, shape: Any, other: str, other_shape: Any) -> None:
    """Raise ``ValueError`` unless ``shape == other_shape`` (both as tuples)."""
    if tuple(shape) != tuple(other_shape):
        raise ValueError(
            f"Invalid {name}: shape {tuple(shape)} (must match the shape of {other}, "
            f"{tuple(other_shape)})"
        )


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise fail(name, value, f"one of {allowed}")


def missing(name: str, owner: str, what: str, how: str) -> ValueError:
    """The error for a call that lacks an argument it needs: ``Missing closure: ...``."""
    return ValueError(f"Missing {name}: {owner} needs {what} ({name}: {how})")


def missing_loss(name: str, owner: str, how: str) -> ValueError:
    """The error for an optimizer that needs the loss and was not given it."""
    return missing(name, owner, "the current loss", how)
