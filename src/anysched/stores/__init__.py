"""Job stores. :class:`MemoryStore` is re-exported from :mod:`anysched`; database stores
live in their own modules so their drivers are imported only when used."""

__all__: tuple[str, ...] = ()
