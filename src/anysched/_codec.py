"""The payload codec database stores share: typed payloads to JSON-compatible data and back.

Built on pydantic's ``TypeAdapter``, so dataclasses, TypedDicts, pydantic models, enums,
datetimes and the rest of the standard types round-trip without per-type code. pydantic
is imported only when a database store is built (it comes with the store's extra).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ._exceptions import PayloadError

T = TypeVar("T")


class PayloadCodec(Generic[T]):
    """Encodes payloads of one type to JSON-compatible values and decodes them back.

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

    def encode(self, payload: T) -> Any:
        """JSON-compatible data for ``payload``. :raises PayloadError: it does not fit the type"""
        try:
            return self._adapter.dump_python(payload, mode="json", warnings="error")
        except Exception as error:
            raise PayloadError(f"payload {payload!r} cannot be encoded as {self._type_name}: {error}") from error

    def decode(self, data: Any) -> T:
        """The payload ``data`` encodes. :raises PayloadError: it does not fit the type"""
        try:
            return self._adapter.validate_python(data)
        except Exception as error:
            raise PayloadError(f"stored payload {data!r} is not a valid {self._type_name}: {error}") from error

    @property
    def _type_name(self) -> str:
        return getattr(self.payload_type, "__name__", repr(self.payload_type))
