"""Surrogates by name: built-ins register with a decorator, third parties through entry points."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from surrogates.base import Surrogate

ENTRY_POINT_GROUP = "evoprune.surrogates"

_REGISTRY: dict[str, type[Surrogate]] = {}


def register_surrogate(name: str) -> Callable[[type[Surrogate]], type[Surrogate]]:
    """Class decorator that makes a surrogate available as ``name``."""

    def decorate(cls: type[Surrogate]) -> type[Surrogate]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"surrogate name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available_surrogates() -> list[str]:
    """Names of every registered surrogate, built-in and from installed plugins."""
    _load_entry_points()
    return sorted(_REGISTRY)


def make_surrogate(name: str, **params) -> Surrogate:
    """Instantiate the surrogate registered as ``name`` with constructor ``params``."""
    _load_entry_points()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return cls(**params)
