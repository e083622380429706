"""attrs field helpers and the raw-mapping reader behind every config class.

A config class declares each field once, with its default, its OpenClaw key name (field
metadata) and a validator that raises :class:`FieldError` naming the dotted key. So a config
built directly in Python is checked exactly like one read from a file, and
:meth:`Reader.build` only has to rename keys and say where in the file a section sits.

The plugin's config (:mod:`openclaw_http_compat.config`) and the reference gateway's
(:mod:`openclaw_http_compat.reference.config`) are both built on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
from attrs import AttrsInstance

from .errors import ConfigError

__all__ = (
    "KEY",
    "SECRET",
    "FieldError",
    "Reader",
    "boolean",
    "choice",
    "describe",
    "fail",
    "integer",
    "meta",
    "section_of",
    "string",
    "strings",
    "to_int",
    "to_lowered",
    "to_tuple",
)

#: Field metadata: the field's key in the OpenClaw config, relative to its section.
KEY: Final = "openclaw_key"
#: Field metadata: the value is a secret; a wrong one is described by its type only.
SECRET: Final = "openclaw_secret"

_A = TypeVar("_A", bound=AttrsInstance)
_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


class FieldError(ConfigError):
    """A config value failed its field's check.

    ``key`` is relative to the section (``maxBodyBytes``, ``trustedProxies[1]``), so that a
    reader can name where the section really sits (``agents.list[3]`` rather than
    ``agents.entries.<id>``); the message already names the section's usual place.
    """

    def __init__(self, section: str, key: str, problem: str) -> None:
        super().__init__(f"{section}.{key}: {problem}" if section else f"{key}: {problem}")
        self.key = key
        self.problem = problem


def section_of(instance: object) -> str:
    """The dotted section ``instance`` sits at: its class's ``SECTION``, with ``{id}`` filled
    from ``instance.id`` (an agent or a provider sits under its own id)."""
    template = getattr(type(instance), "SECTION", "")
    return str(template).replace("{id}", str(getattr(instance, "id", "?")))


def fail(instance: object, key: str, problem: str) -> FieldError:
    """The error for ``key`` of ``instance``'s section (raise it)."""
    return FieldError(section_of(instance), key, problem)


def meta(key: str, *, secret: bool = False) -> dict[str, object]:
    """Field metadata: the field's OpenClaw ``key``, and whether its value is a secret."""
    return {KEY: key, SECRET: True} if secret else {KEY: key}


def _key(attribute: attrs.Attribute[Any]) -> str:
    return str(attribute.metadata.get(KEY, attribute.name))


def describe(value: object) -> str:
    """How an error message names a value: its JSON kind, and the value when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _got(attribute: attrs.Attribute[Any], value: object) -> str:
    # A mistyped secret is still a secret: name its type, never its value.
    return type(value).__name__ if attribute.metadata.get(SECRET) else describe(value)


def to_int(value: Any) -> Any:
    """JSON5 may give an integral float (``5.0``); it counts as the integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(*, minimum: int | None = None, maximum: int | None = None) -> _Validator:
    """An integer (never a boolean) within the bounds."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        key = _key(attribute)
        if isinstance(value, float):
            raise fail(instance, key, f"expected an integer, got {value!r}")
        # bool is an int subclass; a flag must never pass as a number.
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(instance, key, f"expected an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            raise fail(instance, key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise fail(instance, key, f"must be at most {maximum}, got {value}")

    return check


def boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A boolean."""
    if not isinstance(value, bool):
        raise fail(instance, _key(attribute), f"expected a boolean, got {describe(value)}")


def string(*, optional: bool = True) -> _Validator:
    """A string (or ``None`` when ``optional``)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str):
            raise fail(instance, _key(attribute), f"expected a string, got {_got(attribute, value)}")

    return check


def choice(choices: Sequence[str]) -> _Validator:
    """One of ``choices``."""
    allowed = ", ".join(repr(c) for c in choices)

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            got = repr(value) if isinstance(value, str) else describe(value)
            raise fail(instance, _key(attribute), f"expected one of {allowed}, got {got}")

    return check


def to_tuple(value: Any) -> Any:
    """An array becomes a tuple; anything else is left for the validator to name."""
    return tuple(value) if isinstance(value, list) else value


def to_lowered(value: Any) -> Any:
    """An array becomes a tuple of its strings trimmed and lower-cased, blank ones dropped;
    anything else is left for the validator to name."""
    if not isinstance(value, (list, tuple)):
        return value
    items = (v.strip().lower() if isinstance(v, str) else v for v in value)
    return tuple(v for v in items if v != "")


def strings(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A tuple of strings."""
    key = _key(attribute)
    if not isinstance(value, tuple):
        raise fail(instance, key, f"expected an array of strings, got {describe(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(instance, f"{key}[{index}]", f"expected a string, got {describe(item)}")


class Reader:
    """One section of the raw config mapping, naming dotted keys in errors.

    It walks the file's structure (sections must be objects) and hands each config class the
    values under its OpenClaw key names; the class's own validators check them.
    """

    __slots__ = ("_data", "path")

    def __init__(self, data: object, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or '<root>'}: expected an object, got {describe(data)}")
        self._data: Mapping[str, object] = data
        self.path = path

    def key(self, name: str) -> str:
        """The dotted key of ``name`` in this section."""
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> object:
        """The raw value of ``name`` (``None`` when absent)."""
        return self._data.get(name)

    def names(self) -> list[str]:
        """The keys of this section, in file order."""
        return list(self._data)

    def section(self, name: str) -> Reader:
        """The sub-section ``name``; an absent one reads as empty."""
        return Reader(self._data.get(name), self.key(name))

    def build(self, cls: type[_A], *, rekey: Mapping[str, str] | None = None, **given: Any) -> _A:
        """``cls`` from this section: each field with a :data:`KEY` takes the value under
        that key (absent or ``null``: the field's default), ``given`` values win.

        Raises:
            ConfigError: a value failed its field's check, named by its dotted key here.
        """
        kwargs: dict[str, object] = {}
        for field in attrs.fields(cls):
            name = field.alias or field.name
            if name in given:
                continue
            key = field.metadata.get(KEY)
            value = self._data.get(key) if isinstance(key, str) else None
            if value is not None:
                kwargs[name] = value
        kwargs.update(given)
        try:
            return cls(**kwargs)
        except FieldError as exc:
            key = (rekey or {}).get(exc.key, exc.key)
            raise ConfigError(f"{self.key(key)}: {exc.problem}") from None
