"""Name → object registries (models, formats, runtimes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from toolkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to registered objects, with helpful misses.

    Args:
        kind: What is registered ("model", "format", "runtime"), used in messages.
        name_attribute: Set this class attribute of each registered class to its name
            (when the class does not set it itself), so messages can name it.
    """

    def __init__(self, kind: str, name_attribute: str | None = None) -> None:
        self.kind = kind
        self.name_attribute = name_attribute
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``; a second registration is an error."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            attribute = self.name_attribute
            if attribute and isinstance(obj, type) and attribute not in vars(obj):
                setattr(obj, attribute, name)
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise naming the valid choices."""
        if not isinstance(name, str):  # e.g. a network object where its name was wanted
            raise UnknownNameError(
                f"a {self.kind} is given by its registered name ({', '.join(self.names())}), "
                f"not a {type(name).__name__} object"
            )
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}"
            ) from None

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under, or None."""
        return next((name for name, item in self._items.items() if item is obj), None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
