"""The rows the store hands out, as frozen dataclasses: runs, evaluations, fidelities, failures,
screenings, task results, recoveries.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    id: int
    run_key: str
    model: str
    model_fingerprint: str
    data: str
    data_fingerprint: str
    dense_params: int
    space: dict
    settings: dict
    versions: dict
    created_at: str


@dataclass(frozen=True)
class Evaluation:
    id: int
    run_id: int
    config_key: str
    levels: list[int]
    status: str
    origin: str
    round: int
    params: int
    params_fraction: float
    metrics: dict
    cost: dict
    predicted: dict | None
    error: str | None
    created_at: str
    finished_at: str | None
    duration_s: float | None
    # The fidelity ladder (filled by Store.evaluations): rung token count -> metrics of the
    # higher rungs this configuration reached, and its validation measurement, if any.
    ladder: dict = field(default_factory=dict)
    validation: dict | None = None


@dataclass(frozen=True)
class Fidelity:
    """One measurement of an evaluated configuration above its first rung: a higher rung of the
    search windows (``split`` search) or the validation split."""

    id: int
    run_id: int
    eval_id: int
    split: str
    tokens: int
    round: int
    status: str
    metrics: dict
    error: str | None
    duration_s: float | None
    created_at: str
    finished_at: str | None


@dataclass(frozen=True)
class Failure:
    """A worker failure; ``eval_id`` is None (and ``attempt`` 0) when it failed while loading."""

    id: int
    run_id: int
    eval_id: int | None
    attempt: int
    worker: str
    error: str
    retried: bool
    created_at: str


@dataclass(frozen=True)
class Screening:
    """A low-fidelity measurement of one configuration on ``tokens`` tokens."""

    id: int
    run_id: int
    config_key: str
    levels: list[int]
    tokens: int
    round: int
    status: str
    metrics: dict
    error: str | None
    duration_s: float | None
    created_at: str


@dataclass(frozen=True)
class TaskRecord:
    """Task accuracy of one configuration: ``source`` is dense, masks or export; ``n`` questions."""

    id: int
    run_id: int | None
    eval_id: int | None
    config_key: str | None
    model: str
    source: str
    task: str
    shots: int
    n: int
    metrics: dict
    details: dict
    created_at: str


@dataclass(frozen=True)
class RecoveryRecord:
    """A recovery training of the export of evaluation ``eval_id``, written to ``out``:
    ``before``/``after`` are the held-out figures (``ppl``, ``ppl_se``, ``kl``, ``tokens``, ...) on
    the first tokens of ``data``; ``details`` the settings, the teacher and the split."""

    id: int
    run_id: int
    eval_id: int
    out: str
    method: str
    steps: int
    data: str
    before: dict
    after: dict
    details: dict
    created_at: str
