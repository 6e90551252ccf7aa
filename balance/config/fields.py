"""The schema machinery of the frozen config (no torch): field specs with their metadata, the ``applies`` predicates,
and the per-field validation every section runs on construction (``balance.config.settings`` documents the
metadata keys)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from balance.config.codecs import MAX_TEXT, ConfigError, field_kind, show
from balance.engine import laws


def _spec(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def _is(key: str, *values: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat[key] in values


def _data(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return _is("data.name", *names)


def _not_data(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat["data.name"] not in names


def _model(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return _is("model.name", *names)


def _not_model(*names: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda flat: flat["model.name"] not in names


def _datasets() -> tuple[str, ...]:
    return tuple(laws.DATASETS)


def _models() -> tuple[str, ...]:
    return tuple(laws.MODELS)


def _optimizers() -> tuple[str, ...]:
    return tuple(laws.OPTIMIZERS)


def _schedules() -> tuple[str, ...]:
    return tuple(laws.SCHEDULES)


# The choices and which optimiser settings apply come from the torch-free registry: adding an optimiser, an
# activation, a model family or a dataset there is what makes the config (and so the CLI, the URL, the sidebar)
# offer it.
ACTIVATIONS = tuple(laws.ACTIVATIONS)
INITS = ("gaussian", "uniform", "orthogonal")
BIAS_INITS = ("zero", "weights")
POOLINGS = ("avg", "max")
LOSSES = ("auto", "squared", "logistic", "cross_entropy")
DTYPES = ("float32", "float64")


class _Validated:
    """Checks every field against its metadata on construction, then the class's own ``_check``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_field(self._section, f, getattr(self, f.name))  # type: ignore[attr-defined]
        self._check()

    def _check(self) -> None:
        pass

    def _fail(self, name: str, value: Any, why: str) -> typing.NoReturn:
        raise ConfigError(f"{self._section}.{name} = {show(value)}: {why}")  # type: ignore[attr-defined]


def _check_field(section: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    where = f"{section}.{f.name} = {show(value)}"
    kind = field_kind(f)
    items = value if kind in (tuple, "inttuple") else (value,)
    base = float if kind is tuple else int if kind == "inttuple" else kind
    if kind in (tuple, "inttuple") and not isinstance(value, tuple):
        raise ConfigError(f"{where}: expected a list of numbers")
    for v in items:
        if base is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: expected true or false")
            continue
        if base is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{where}: expected a whole number")
        if base is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: expected a number")
            if not math.isfinite(v):
                raise ConfigError(f"{where}: expected a finite number")
        if base is str and not isinstance(v, str):
            raise ConfigError(f"{where}: expected text")
        if base is str and len(v) > MAX_TEXT:
            raise ConfigError(f"{where}: longer than {MAX_TEXT} characters")
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{where}: out of range, allowed {lo} to {hi}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise ConfigError(f"{where}: not one of {', '.join(allowed)}")
