"""The pair store: every real evaluation, committed the moment it finishes, in SQLite.

``Store`` (``database``, with its logs in ``logs`` and its read-only connection in ``connection``),
the rows it returns (``records``), the schema (``schema``), and the lock that keeps one searching
process per store (``lock``, whose ``path_lock`` also keeps one ``evoprune recover`` per output
directory).

Tables:

- ``runs``: one search, with the model, data, resolved settings, search space and versions.
- ``evaluations``: one row per configuration a run decided to evaluate. It is written as
  ``pending`` before the model runs and updated to ``ok`` or ``failed`` with its metrics, so
  a killed search resumes exactly where it stopped: pending rows are evaluated first, finished
  rows are never evaluated again.
- ``screenings``: cheap low-fidelity measurements (perplexity on a few tokens) that multi-
  fidelity search takes before deciding which candidates get a full evaluation; one row per
  configuration and token count. Surrogates never train on them.
- ``fidelities``: the fidelity ladder: a configuration promoted to a higher rung (more tokens
  of the search windows) gets one row per rung, and a pick gets a row for its measurement on
  the validation split. Written ``pending`` first like evaluations, so a killed ladder resumes
  without losing or repeating a measurement. The first rung is the evaluation row itself.
- ``rounds``: per active-learning round, timings and the front's hypervolume.
- ``failures``: every worker that died or raised under a distributed executor, with the job it
  held (if any), which attempt that was and whether the job was retried elsewhere.
- ``task_results``: task accuracies (``evoprune evaluate``) of a configuration, linked to its
  run and evaluation when the store holds them.
- ``recoveries``: recovery trainings (``evoprune recover``) of an export of an evaluation, with
  its held-out figures before and after (stores written before it existed read as having none).
"""

from evoprune.store.database import Store
from evoprune.store.records import Evaluation, Failure, Fidelity, RecoveryRecord, Run, Screening, TaskRecord
from evoprune.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Evaluation",
    "Failure",
    "Fidelity",
    "RecoveryRecord",
    "Run",
    "Screening",
    "Store",
    "TaskRecord",
]
