"""Surrogates by name: built-ins register with a decorator, third parties through entry points.

A third-party package makes its surrogate available to ``evoprune search --surrogate NAME``
by declaring, in its own ``pyproject.toml``::

    [project.entry-points."evoprune.surrogates"]
    my-model = "my_package.module:MySurrogate"

where ``MySurrogate`` subclasses :class:`surrogates.Surrogate` (or otherwise follows its
contract: ``fit(X, y)`` returns self, ``predict(X, return_std=True)`` returns mean and std,
constructor takes ``random_state``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from surrogates.base import Surrogate

ENTRY_POINT_GROUP = "evoprune.surrogates"

_REGISTRY: dict[str, type[Surrogate]] = {}
# Name -> entry point ("module:Class") of every surrogate a plugin provides, loaded or not.
_PLUGINS: dict[str, str] = {}
# Plugins whose entry point could not be loaded, with the reason: an error when asked for by
# name, so one broken plugin does not take down the search with every other surrogate; a
# ``SurrogatePluginWarning`` (once) when another surrogate is used.
_BROKEN: dict[str, str] = {}
_WARNED: set[str] = set()


class SurrogatePluginWarning(UserWarning):
    """An installed surrogate plugin could not be loaded (the others still work)."""


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
        if ep.name in _REGISTRY or ep.name in _BROKEN:
            continue
        _PLUGINS[ep.name] = ep.value
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import error of a third-party plugin
            _BROKEN[ep.name] = exception_text(exc)
            continue
        is_regressor = callable(getattr(cls, "fit", None)) and callable(getattr(cls, "predict", None))
        if not (isinstance(cls, type) and is_regressor):
            _BROKEN[ep.name] = "it is not a regressor class with fit and predict"
            continue
        _REGISTRY[ep.name] = cls


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a traceback-free, one-line reason)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def exception_text(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``: what a third-party failure was, in one line."""
    return ": ".join(filter(None, (type(exc).__name__, first_line(exc))))


def _broken_text(name: str) -> str:
    return f"surrogate plugin {name!r} failed to load from {_PLUGINS[name]} ({_BROKEN[name]}): fix or uninstall it"


def _warn_broken(stacklevel: int = 3) -> None:
    """One ``SurrogatePluginWarning`` per broken plugin and process, when another surrogate is used."""
    for name in sorted(set(_BROKEN) - _WARNED):
        _WARNED.add(name)
        warnings.warn(_broken_text(name), SurrogatePluginWarning, stacklevel=stacklevel)


def plugin_entry_point(name: str) -> str | None:
    """``module:Class`` of the plugin that provides surrogate ``name``; None for a built-in."""
    _load_entry_points()
    return _PLUGINS.get(name)


def available_surrogates() -> list[str]:
    """Names of every registered surrogate, built-in and from installed plugins."""
    _load_entry_points()
    _warn_broken()
    return sorted(_REGISTRY)


def _literal(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_surrogate_spec(spec: str) -> tuple[str, dict]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, constructor parameters).

    Values become bools, ints or floats where they read as one, else stay strings, so
    ``--surrogate additive:link=auto,c=1.5`` sets two constructor parameters.
    """
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"surrogate option {item!r} in {spec!r} is not key=value: write e.g. additive:link=auto")
        params[key.strip()] = _literal(value.strip())
    return name.strip(), params


def make_surrogate(name: str, **params) -> Surrogate:
    """Instantiate the surrogate ``name`` (a registered name, optionally with ``:key=value,...``
    options, see ``parse_surrogate_spec``) with constructor ``params``."""
    name, spec_params = parse_surrogate_spec(name)
    params = {**spec_params, **params}
    _load_entry_points()
    if name in _BROKEN:
        raise ValueError(_broken_text(name))
    _warn_broken()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    # scikit-learn's own list of constructor parameters: no instance needed to check the options
    accepted = set(cls._get_param_names()) if hasattr(cls, "_get_param_names") else None
    unknown = sorted(set(spec_params) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(f"surrogate {name!r} has no option {unknown[0]!r}: use any of {', '.join(sorted(accepted))}")
    return cls(**params)
