"""Name → factory registries for models, datasets, attacks, defenses and metrics.

Every configurable component is created by name, so a study config can name it and an unknown name fails
before anything runs, with the list of valid names.

Examples
--------
>>> MODELS = Registry("model")
>>> @MODELS.register("tiny")
... def tiny(num_classes: int = 10):
...     return num_classes
>>> MODELS.create("tiny", num_classes=3)
3
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gradleak.errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A named collection of factories returning ``T``.

    Parameters
    ----------
    kind
        What the registry holds ("model", "attack", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory (a class or function) under ``name``."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            doc = help if help is not None else (factory.__doc__ or "")
            self._help[name] = doc.strip().splitlines()[0] if doc.strip() else ""
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; an unknown name raises with the valid names."""
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, /, **options: object) -> T:
        """Build the component ``name`` with ``options``."""
        return self.get(name)(**options)

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` unless ``name`` is registered (used to validate configs early)."""
        self.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def describe(self, name: str) -> str:
        """First line of the factory's docstring."""
        self.get(name)
        return self._help[name]

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._factories)

    def _unknown_message(self, name: str) -> str:
        valid = ", ".join(self.names()) or "(none registered)"
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {valid}"

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
