"""Request parameters as Stripe's SDK sends them, checked the way Stripe checks them.

v1 bodies and query strings are form-encoded with bracketed keys (``payload[value]=5``,
``expand[0]=x``); ``form_params`` nests them. v2 bodies are JSON objects. Either way an
endpoint names the parameters it takes (``Spec``): an unknown one, a value of the wrong type,
one too long or missing is refused with Stripe's error and the parameter's name, before
anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from api.errors import invalid

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def form_params(query: QueryDict) -> dict[str, Any]:
    """``a[b]=1&a[c]=2&e[0]=x`` as ``{"a": {"b": "1", "c": "2"}, "e": ["x"]}``. Values stay
    strings, as they come; a key given twice keeps its last value."""
    nested: dict[str, Any] = {}
    for raw_key, values in query.lists():
        match = _KEY.match(raw_key)
        if match is None:
            raise invalid(f"Invalid parameter name: '{raw_key[:100]}'.", param=raw_key[:100])
        parts = [match.group(1), *_PART.findall(match.group(2))]
        node = nested
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                name = _name(parts[: depth + 1])
                raise invalid(f"Invalid {name}: it is both a value and an object.", param=name)
            node = child
        if isinstance(node.get(parts[-1]), dict):
            name = _name(parts)
            raise invalid(f"Invalid {name}: it is both a value and an object.", param=name)
        node[parts[-1]] = values[-1]
    return _lists(nested)


def _lists(node: dict[str, Any]) -> dict[str, Any]:
    """Objects keyed 0, 1, 2 ... (``expand[0]``) become lists."""
    for key, value in node.items():
        if isinstance(value, dict):
            value = _lists(value)
            if value and all(k.isdigit() for k in value):
                value = [value[k] for k in sorted(value, key=int)]
            node[key] = value
    return node


def json_params(body: bytes) -> dict[str, Any]:
    """A v2 body: a JSON object (an empty body is an empty one)."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(
            f"The request body is not valid JSON ({error}). Send a JSON object.",
            code="invalid_json",
        ) from error
    if not isinstance(parsed, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    return parsed


def _name(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


@dataclass(frozen=True)
class Spec:
    """The parameters an endpoint takes: each name with its kind, ``str`` (up to
    ``max_length``), ``int``, ``strmap`` (an object of strings), ``list`` (of strings) or a
    nested ``Spec``; ``required`` names those it needs."""

    fields: Mapping[str, Any]
    required: frozenset[str] = frozenset()
    max_lengths: Mapping[str, int] = field(default_factory=dict)

    def check(self, params: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for name, value in params.items():
            full = f"{prefix}[{name}]" if prefix else name
            kind = self.fields.get(name)
            if kind is None:
                raise invalid(f"Received unknown parameter: {full}", param=full)
            checked[name] = self._value(full, kind, value, self.max_lengths.get(name))
        for name in sorted(self.required - checked.keys()):
            full = f"{prefix}[{name}]" if prefix else name
            raise invalid(f"Missing required param: {full}.", param=full, code="parameter_missing")
        return checked

    @staticmethod
    def _value(full: str, kind: Any, value: Any, max_length: int | None) -> Any:
        if isinstance(kind, Spec):
            if not isinstance(value, Mapping):
                raise invalid(f"Invalid object: {full} must be an object.", param=full)
            return kind.check(value, prefix=full)
        if kind == "str":
            if not isinstance(value, str):
                raise invalid(f"Invalid string: {full} must be a string.", param=full)
            if max_length is not None and len(value) > max_length:
                raise invalid(
                    f"Invalid {full}: must be at most {max_length} characters long.", param=full
                )
            return value
        if kind == "int":
            return _integer(full, value)
        if kind == "strmap":
            if not isinstance(value, Mapping) or not all(
                isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()
            ):
                raise invalid(f"Invalid object: {full} must be an object of strings.", param=full)
            return {str(k): str(v) for k, v in value.items()}
        if kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise invalid(f"Invalid array: {full} must be a list of strings.", param=full)
            return value
        raise AssertionError(kind)  # pragma: no cover - a Spec names only the kinds above


def _integer(full: str, value: Any) -> int:
    if isinstance(value, bool):
        raise invalid(f"Invalid integer: {full}", param=full)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        number = int(value)
    else:
        raise invalid(f"Invalid integer: {str(value)[:50]}", param=full)
    return number
