"""The search engine: settings, the run context, the methods and what they are made of.

- ``settings``: ``SearchSettings``; ``config``: settings from a TOML file, CLI options or a stored run
- ``context``: ``SearchContext``, one run in one store; ``ladder``: its fidelity ladder and picks
- ``registry``: ``Strategy`` and the table of methods by name
- ``active_learning``: evoprune's own method; ``baselines``: the others, one module per family
- ``design``, ``acquisition``, ``features``: the initial design, acquisition functions and the
  features the surrogates see
- ``run``: ``search()``, ``prepare_backend`` and ``run_strategy``

Importing the package registers the built-in methods (evoprune's first, then the baselines).
"""

from evoprune.engine import active_learning  # noqa: F401  isort: skip
from evoprune.engine import baselines  # noqa: F401  isort: skip
