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
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gradleak.errors import GradleakError, UnknownNameError

T = TypeVar("T")

__all__ = ["Registry", "UnknownOptionError", "first_sentence", "option_names"]


class UnknownOptionError(GradleakError, TypeError):
    """An option the component does not take; the message lists the ones it does."""


def option_names(factory: Callable[..., object]) -> list[str] | None:
    """The keyword options ``factory`` takes (``None`` when it takes any)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not p.name.startswith("_")]


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_ABBREVIATIONS = {"sec", "secs", "eq", "eqs", "fig", "figs", "al", "e.g", "i.e", "cf", "vs", "etc", "no", "ref"}


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, on one line, without reStructuredText markup."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "").replace("**", "")
    for match in re.finditer(r"\.(\s|$)", text):
        word = re.search(r"([\w.]+)$", text[: match.start()])
        if word is None or word.group(1).lower() not in _ABBREVIATIONS:
            return text[: match.start() + 1]
    return text


class Registry(Generic[T]):
    """A named collection of factories returning ``T``.

    Parameters
    ----------
    kind
        What the registry holds ("model", "attack", ...); used in error messages.
    named
        The registry holds classes whose ``name`` attribute is their registered name: :meth:`register` sets it
        (attacks and defenses report it in their results), and refuses anything but a class.
    """

    def __init__(self, kind: str, *, named: bool = False) -> None:
        self.kind = kind
        self.named = named
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory (a class or function) under ``name``."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.named:
                if not isinstance(factory, type):
                    raise TypeError(f"the {self.kind} registry holds classes; {factory!r} is not one")
                factory.name = name  # type: ignore[attr-defined]
            self._factories[name] = factory
            doc = help if help is not None else (factory.__doc__ or "")
            self._help[name] = first_sentence(doc) if doc.strip() else ""
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; an unknown name raises with the valid names."""
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def create(self, name: str, /, **options: object) -> T:
        """Build the component ``name`` with ``options``; an option it does not take raises
        :class:`UnknownOptionError` listing the valid ones."""
        factory = self.get(name)
        valid = option_names(factory)
        if valid is not None:
            for key in options:
                if key not in valid:
                    close = difflib.get_close_matches(key, valid, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise UnknownOptionError(f"{self.kind} {name!r} has no option {key!r}.{hint} Its options: "
                                             f"{', '.join(valid) or '(none)'}")
        return factory(**options)

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` unless ``name`` is registered (used to validate configs early)."""
        self.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def describe(self, name: str) -> str:
        """First sentence of the factory's docstring (one line, no markup)."""
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
