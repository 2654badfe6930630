"""Baselines: search methods that run through the same evaluator, store and budget as evoprune's own.

One module per family, each method registered by name in ``evoprune.engine.registry``:

- ``one_shot``: the frame of the one-shot recipes an expert runs first (their answer under a
  budget, within 1% under ``--max-params`` on a fine level grid; a spread of kept fractions
  without one). All rank heads and channels by the run's ``--importance``, as evoprune does.
- ``uniform``: ``uniform`` (LLM-Pruner's recipe) and ``mlp-only``.
- ``flap``: ``flap`` (FLAP's global z-score ranking).
- ``owl``: ``owl`` (fewer removals in layers with more outlier units).
- ``sampling``: ``random`` and ``predictor-rank`` (the paper's method).
- ``ga``: ``ga`` (NSGA-II on real evaluations).

Importing this package registers them, in the order the CLI lists them.
"""

from evoprune.engine.baselines import uniform  # noqa: F401  isort: skip
from evoprune.engine.baselines import flap  # noqa: F401  isort: skip
from evoprune.engine.baselines import owl  # noqa: F401  isort: skip
from evoprune.engine.baselines import sampling  # noqa: F401  isort: skip
from evoprune.engine.baselines import ga  # noqa: F401  isort: skip
