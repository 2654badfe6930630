"""Search methods by name: the ``Strategy`` base class and the table that evoprune's own method
(``evoprune.engine.active_learning``) and the baselines (``evoprune.engine.baselines``) register into.

A method is a class with a ``name`` and ``run(ctx)``; ``@register_strategy`` adds it to ``STRATEGIES``
(in registration order, which is the order the CLI lists them). ``evoprune.engine`` imports the
built-in methods, so the table is full whenever any part of the engine is imported.
"""

from __future__ import annotations


class Strategy:
    """A search method: proposes configurations through a ``SearchContext`` until the budget is spent."""

    name = "base"

    def run(self, ctx) -> None:  # pragma: no cover - abstract
        """Propose and evaluate configurations through ``ctx`` (an ``evoprune.engine.context.SearchContext``)."""
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` a search method under ``cls.name``."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"search method {cls.name!r} is registered twice")
    STRATEGIES[cls.name] = cls
    return cls
