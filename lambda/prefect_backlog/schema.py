"""Declarative settings: each configuration field is declared once, and parsed, checked and written back from it.

A :class:`Setting` names its context key, the attribute it fills, how its value
is converted (and so checked) and its default. From that one declaration come
the parsing (every problem collected, each naming its path such as
``queues[2].maxCapacity``), the unknown-key check with its "did you mean" and
the canonical form the stack packages into the Lambda (:func:`encode`).

Values may arrive as the CDK CLI delivers ``-c key=value``: always a string.
Converters therefore accept the string forms of what they take (``"true"``,
``"14"``), and every object- or list-valued setting accepts a JSON string, so
``-c prefectAuth='{...}'`` is checked exactly like the ``cdk.json`` form.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds one line per problem, each naming its field."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Problems:
    """Every problem found in one parse; raised together so a user fixes their configuration in one pass."""

    lines: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")

    def raise_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Setting:
    """One configuration field, declared once.

    ``convert`` turns a given value into the parsed one and raises TypeError or
    ValueError with a message ("must be a whole number") for a bad one; a
    :class:`Shape` instead parses a nested object with its own settings.
    ``scope="service"`` marks a queue entry's setting that belongs to its ECS
    service: the entries of one service must agree on it.
    """

    key: str
    attr: str
    convert: Callable[[Any], Any] | Shape
    default: Any = REQUIRED
    scope: Literal["entry", "service"] = "entry"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Shape:
    """An object of settings, built into ``build(**values)`` (a dataclass) once parsed.

    ``strict`` objects report every key they do not declare; a lenient one (the
    CDK context, which also holds CDK's own feature flags) only keys close
    enough to one of its own to be a typo.
    """

    settings: tuple[Setting, ...]
    build: Callable[..., Any]
    strict: bool = True

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings)


@dataclass(frozen=True)
class Parsed:
    """A parsed object: its values by attribute, which were given (and valid), and which were given but bad."""

    values: dict[str, Any]
    given: frozenset[str]
    invalid: frozenset[str]


def describe(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def decode_json_string(value: Any, what: str) -> Any:
    """``-c key='...'`` delivers objects and lists as JSON strings; decode those, pass anything else through.

    Only a string that opens like JSON (``{`` or ``[``) is decoded: any other
    string is simply a wrong value, and says so ("must be an object, got ...").
    """
    if not isinstance(value, str) or not value.lstrip().startswith(("{", "[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is a string that is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"is a string nested too deeply to be {what}") from None


def parse_object(problems: Problems, where: str, value: Any, shape: Shape) -> Parsed | None:
    """Parse one object against ``shape``; None (with the problem recorded) when it is not an object at all.

    A bad field records a problem and takes its default, so that the checks
    that depend on it still run and report what else is wrong.
    """
    try:
        source = decode_json_string(value, "an object")
    except ValueError as exc:
        problems.add(where, str(exc))
        return None
    if not isinstance(source, Mapping):
        problems.add(where, f"must be an object, got {describe(source)}")
        return None
    prefix = f"{where}." if where else ""
    _unknown_keys(problems, prefix, source, shape)
    values: dict[str, Any] = {}
    given: set[str] = set()
    invalid: set[str] = set()
    for setting in shape.settings:
        path = prefix + setting.key
        raw = source.get(setting.key)
        if raw is None:
            if setting.required and setting.scope == "entry":
                problems.add(path, "is required")
            values[setting.attr] = None if setting.required else setting.default
            continue
        if isinstance(setting.convert, Shape):
            nested = parse_object(problems, path, raw, setting.convert)
            values[setting.attr] = None if nested is None else setting.convert.build(**nested.values)
            (given if nested is not None else invalid).add(setting.attr)
            continue
        try:
            values[setting.attr] = setting.convert(raw)
            given.add(setting.attr)
        except (TypeError, ValueError) as exc:
            problems.add(path, f"{exc}, got {describe(raw)}")
            values[setting.attr] = None if setting.required else setting.default
            invalid.add(setting.attr)
    return Parsed(values, frozenset(given), frozenset(invalid))


def _unknown_keys(problems: Problems, prefix: str, source: Mapping[Any, Any], shape: Shape) -> None:
    known = shape.keys
    for key in source:
        if key in known or not isinstance(key, str):
            continue
        if shape.strict:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            problems.add(prefix + key, f"unknown key{hint}")
        elif close := difflib.get_close_matches(key, known, n=1, cutoff=0.8):
            problems.add(prefix + key, f"unknown key (did you mean '{close[0]}'?)")


def encode(settings: Iterable[Setting], value_of: Callable[[Setting], Any]) -> dict[str, Any]:
    """The canonical context form of one object: every setting spelled out, those that are None left out."""
    encoded: dict[str, Any] = {}
    for setting in settings:
        value = value_of(setting)
        if value is None:
            continue
        if isinstance(setting.convert, Shape):
            shape = setting.convert
            value = encode(shape.settings, lambda s, v=value: getattr(v, s.attr))  # type: ignore[misc]
        elif isinstance(value, tuple):
            value = list(value)
        encoded[setting.key] = value
    return encoded


# --- converters: each checks one kind of value and says what it must be ------------------------------


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


def prefect_name(value: Any) -> str:
    """A Prefect pool or queue name: any non-blank string (Prefect accepts leading and trailing spaces)."""
    if not isinstance(value, str):
        raise TypeError("must be a string")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def matching(pattern: str, message: str) -> Callable[[Any], str]:
    compiled = re.compile(pattern)

    def convert(value: Any) -> str:
        text = string(value)
        if not compiled.fullmatch(text):
            raise ValueError(message)
        return text

    return convert


def one_of(*choices: T) -> Callable[[Any], T]:
    def convert(value: Any) -> T:
        for known in choices:
            if value == known and type(value) is type(known):
                return known
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")

    return convert


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError("must be true or false")


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return convert


def positive_number(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TypeError("must be a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("must be a number")
    try:
        number = float(value)
    except OverflowError:  # a whole number too large for a float
        raise ValueError("must be a number greater than 0 and below 1e308") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a number greater than 0")
    return number
