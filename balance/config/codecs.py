"""The text side of the config: one-line errors, the values as the command line, URLs and TOML write and read them.

No torch, no schema: ``balance.config.settings`` builds on these. ``ConfigError`` is the one error every bad value
raises; its message is one line of at most ``MAX_MESSAGE`` characters (``clip``) whatever value it quotes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_MESSAGE = 300  # characters of one error line: a value of 10^6 numbers must not print a 4 MB line
MAX_TEXT = 4096  # characters of a text setting (a path, a column name): PATH_MAX; a link cannot carry megabytes


class ConfigError(ValueError):
    """A bad configuration value; the message names the field, the value and what is allowed.

    The message is one line of at most ``MAX_MESSAGE`` characters (``clip``), whatever value it quotes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(clip(message))


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters: the middle gives way, so the start (what) and the end
    (what is allowed) stay readable."""
    text = str(text)
    if len(text) > 4 * limit:  # a 4 MB message is cut before it is split into words
        text = f"{text[: 2 * limit]} ... {text[-2 * limit :]}"
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = (limit - 5) * 2 // 3
    return f"{line[:head]} ... {line[len(line) - (limit - 5 - head) :]}"


def show(value: Any, most: int = 8) -> str:
    """A value as an error message quotes it: a long list shows its first items and its length, a long text its
    start (never the whole of a 10^6-number list), a nested list or table only what it is."""
    if isinstance(value, (tuple, list)):
        shown = ",".join(show_one(v) for v in value[:most]) or "(empty)"
        return shown if len(value) <= most else f"{shown},... ({len(value)} values)"
    return show_one(value)


def show_one(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:50]) + f"... ({len(value)} characters)"
    if isinstance(value, int) and value.bit_length() > 64:  # str() of a 5,000-digit int raises ValueError
        return f"a whole number of about {value.bit_length() * 0.30103:.0f} digits"
    return str(value)


def field_kind(f: dataclasses.Field) -> Any:
    """The Python type a field holds: bool, int, float, str, tuple (of floats) or 'inttuple'.

    Annotations are strings here (``from __future__ import annotations``), so they are looked up by text.
    """
    return {
        "bool": bool,
        "int": int,
        "float": float,
        "str": str,
        "tuple[float, ...]": tuple,
        "tuple[int, ...]": "inttuple",
    }.get(f.type, f.type)


def loads_toml(text: str, where: str = "config file") -> dict[str, Any]:
    """``tomllib.loads`` whose every failure is a one-line ``ConfigError`` starting with ``where``.

    tomllib parses recursively: a few thousand nested ``[`` raise RecursionError, and an integer of more than 4,300
    digits a ValueError; both are bad input, not a crash.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{where}: lists or tables nested too deeply (a config is at most two levels deep)") from None
    except ValueError as exc:  # int("1" * 5000): Python refuses to convert such long numbers
        raise ConfigError(f"{where}: not usable TOML ({exc})") from None


def coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    """Accept what TOML / JSON give (lists, ints for floats); anything else is left for validation to refuse."""
    kind = field_kind(f)
    if kind in (tuple, "inttuple") and isinstance(value, list):
        value = tuple(value)
    if kind is tuple and isinstance(value, tuple):
        return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_text(section: str, f: dataclasses.Field, text: str) -> Any:
    """Parse one query-string / command-line value according to the field's type."""
    kind = field_kind(f)
    where = f"{section}.{f.name} = {show(text)}"
    try:
        if kind is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError
            return low in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is tuple:
            return tuple(float(v) for v in text.split(",") if v.strip())
        if kind == "inttuple":
            return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{where}: not a valid {getattr(kind, '__name__', 'list')}") from None
    return text


def to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(to_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def flatten(nested: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[name] = value
    return nested
