"""The payload codec database stores share: typed payloads to JSON-compatible data and back.

Built on pydantic's ``TypeAdapter``, so dataclasses, TypedDicts, pydantic models, enums,
datetimes and the rest of the standard types round-trip without per-type code. pydantic
is imported only when a database store is built (it comes with the store's extra).

A payload may hold secrets, so no message built here shows a payload's value: pydantic's
own texts do (``input_value=…``), and so would its exceptions chained as causes.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from ._exceptions import PayloadError

T = TypeVar("T")

_MAX_ERRORS_SHOWN = 5
# pydantic error types whose text may carry part of the input or a validator's own message
# (which may quote the input): only their type is shown.
_TEXT_FROM_INPUT = frozenset(
    {
        "value_error",
        "assertion_error",
        "union_tag_invalid",
        "json_invalid",
        "get_attribute_error",
        "iteration_error",
        "mapping_type",
        "no_such_attribute",
        "timezone_offset",
        "datetime_object_invalid",
    }
)


class PayloadCodec(Generic[T]):
    """Encodes payloads of one type to JSON-compatible values and decodes them back.

    Errors are :class:`~anysched.PayloadError`\\ s that name the fields and the kinds of
    failure, never the payload's values, and chain no exception that would.

    :param payload_type: the payload's type, e.g. a dataclass, ``TypedDict`` or pydantic
        model, or ``dict[str, Any]``
    """

    def __init__(self, payload_type: type[T] | Any) -> None:
        try:
            from pydantic import TypeAdapter
        except ImportError:  # pragma: no cover -- the extras bring pydantic
            raise ImportError(
                "typed payloads in a database store need pydantic: install anysched[mongo] or anysched[sqlite]"
            ) from None
        try:
            self._adapter: TypeAdapter[T] = TypeAdapter(payload_type)
        except Exception as error:
            raise TypeError(f"payload_type {payload_type!r} cannot be encoded: {error}") from error
        self.payload_type = payload_type
        self._known_names = _schema_strings(self._adapter.core_schema)

    def encode(self, payload: T) -> Any:
        """JSON-compatible data for ``payload``. :raises PayloadError: it does not fit the type"""
        try:
            return self._adapter.dump_python(payload, mode="json", warnings="error")
        except Exception as error:  # the text quotes the payload: only its kind goes on
            kind = _serialization_kind(error)
        # raised outside the except block, so the original is not even its __context__
        raise PayloadError(f"a payload of type {type(payload).__name__} cannot be encoded as {self._type_name}: {kind}")

    def decode(self, data: Any) -> T:
        """The payload ``data`` encodes. :raises PayloadError: it does not fit the type"""
        from pydantic import ValidationError

        try:
            return self._adapter.validate_python(data)
        except ValidationError as error:
            what = self._describe(error.errors(include_input=False, include_url=False, include_context=False))
        except Exception as error:  # a validator of the payload type's own raised something else
            what = f"its validation raised {type(error).__name__}"
        raise PayloadError(f"a stored payload is not a valid {self._type_name}: {what}")

    def _describe(self, errors: Sequence[Any]) -> str:
        """What failed where, e.g. ``field 'n': Input should be a valid integer (int_parsing)``."""
        described = [f"{self._where(error['loc'])}: {_what(error['type'], error['msg'])}" for error in errors]
        more = len(described) - _MAX_ERRORS_SHOWN
        return "; ".join(described[:_MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")

    def _where(self, loc: Iterable[int | str]) -> str:
        # A location's parts are field names, list indexes, or a mapping's keys, which come from
        # the payload: a part is shown only if the type's schema itself holds it.
        parts = [str(part) if isinstance(part, int) or part in self._known_names else "…" for part in loc]
        return f"field {'.'.join(parts)!r}" if parts else "the payload"

    @property
    def _type_name(self) -> str:
        return getattr(self.payload_type, "__name__", repr(self.payload_type))


def json_text(data: Any, what: str) -> str:
    """``data`` (as :meth:`PayloadCodec.encode` returns it) as compact JSON text, for a store that keeps text.

    :param what: the payload, as the error names it (``"a payload of type Email"``)
    :raises PayloadError: it has no JSON form (a NaN, say); the message names ``what`` and the
        error's kind, never the value (the error's own text may quote it)
    """
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        kind = type(error).__name__
    raise PayloadError(f"{what} cannot be stored as JSON ({kind})")


def _what(error_type: str, message: str) -> str:
    """pydantic's message for a known error type that quotes nothing from the input; the type alone otherwise."""
    if error_type in _error_types() and error_type not in _TEXT_FROM_INPUT:
        return f"{message} ({error_type})"
    return f"invalid value ({error_type})"


def _serialization_kind(error: Exception) -> str:
    text = str(error)
    if "PydanticSerializationUnexpectedValue" in text:
        return "a value does not match its declared type"
    if text.startswith("Unable to serialize unknown type"):
        return "a value has a type that cannot be serialized"
    return f"serialization failed ({type(error).__name__})"


def _schema_strings(schema: object) -> frozenset[str]:
    """Every string in a pydantic core schema: the field names, aliases and tags a location may name."""
    found: set[str] = {"[key]"}  # pydantic's own marker for a mapping key that failed
    pending: list[object] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            found.add(node)
        elif isinstance(node, dict):
            node = typing.cast("dict[object, object]", node)
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, (list, tuple)):
            pending.extend(typing.cast("Iterable[object]", node))
    return frozenset(found)


@functools.cache
def _error_types() -> frozenset[str]:
    """pydantic's own error types; a custom one (``PydanticCustomError``) carries a validator's text."""
    from pydantic_core.core_schema import ErrorType

    return frozenset(typing.get_args(ErrorType))
