"""Choosing under a budget: which evaluated configurations meet a ``Budget`` (parameters, memory,
latency), and the best of them. ``plan`` and ``export --pick best|knee`` both choose here, so
the same budget gives the same answer."""

from __future__ import annotations

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.objectives.cost import CostModel
from evoprune.objectives.pareto import best_of, front_of, knee_of, run_objectives, rung_offsets
from evoprune.objectives.spec import Budget, CostEvaluator, is_quality, parse_size, size_text
from evoprune.space import SearchSpace
from evoprune.store import Evaluation, Run, Store

BUDGET_OPTIONS = (
    ("max_params", "--max-params"),
    ("max_memory", "--max-memory"),
    ("max_latency_ms", "--max-latency-ms"),
)


def has_limit(budget: Budget | None) -> bool:
    """Whether ``budget`` bounds any cost from above."""
    return budget is not None and any(getattr(budget, field) is not None for field, _ in BUDGET_OPTIONS)


def recorded_budget(run: Run) -> Budget:
    """The budget ``run`` searched under (its ``--max-params``, ``--max-memory``, ``--max-latency-ms``)."""
    s = run.settings
    return Budget(**{field: s.get(field) for field, _ in BUDGET_OPTIONS})


def budget_text(budget: Budget) -> str:
    """``--max-params 0.7 --max-memory 400MB``: the options that state ``budget``."""
    parts = []
    for field, option in BUDGET_OPTIONS:
        value = getattr(budget, field)
        if value is not None:
            parts.append(f"{option} {_option_value(value)}")
    return " ".join(parts)


def _option_value(value: str | float) -> str:
    """A budget value as it would be typed: a parameter count in full (``90000000``, not ``9e+07``)."""
    if isinstance(value, str):
        return value
    return str(int(value)) if 1 < value < float("inf") and value == int(value) else f"{value:g}"


def cost_evaluator(run: Run, latency: bool = True) -> CostEvaluator:
    """The run's costs (its bytes per weight); with ``latency``, latency from this machine's cached
    table, which reads the model's config (without, no file of the model is read)."""
    from evoprune.backend.loading import load_config, resolve_model

    config = load_config(resolve_model(run.model)) if latency else None
    return CostEvaluator(
        SearchSpace.from_dict(run.space), config, dtype=run.settings["backend"].get("dtype", "float32")
    )


def latencies(run: Run, evals: list[Evaluation], costs: CostEvaluator | None = None) -> dict[int, float]:
    """Predicted forward latency (ms) of each evaluation, by id. Where every one recorded it (a
    run searched under a latency budget), those figures, which the search chose by; else every
    configuration is priced by the same table, this machine's cached one (timed when missing)."""
    if not evals:
        return {}
    if all("latency_ms" in (e.cost or {}) for e in evals):
        return {e.id: float(e.cost["latency_ms"]) for e in evals}
    costs = costs or cost_evaluator(run)
    X = np.array([e.levels for e in evals], dtype=int)
    return {e.id: float(ms) for e, ms in zip(evals, costs.matrix(X, ["latency"])[:, 0], strict=True)}


def breaches(
    run: Run, evals: list[Evaluation], budget: Budget, costs: CostEvaluator | None = None
) -> tuple[dict[int, str], dict[int, float]]:
    """(by id, the first bound of ``budget`` each of ``evals`` breaks, in words (``keeps 0.812 of
    the parameters, over --max-params (0.700)``); the predicted latency of each by id when
    ``budget`` bounds latency, else ``{}``). Memory as the cost model counts it: weights and the KV
    cache at 2048 tokens, in the run's bytes per weight."""
    latency = latencies(run, evals, costs) if budget.max_latency_ms is not None else {}
    memory = CostModel(SearchSpace.from_dict(run.space), dtype=run.settings["backend"].get("dtype", "float32"))
    limit_params = budget.params_fraction_limit(run.dense_params)
    limit_memory = parse_size(budget.max_memory) if budget.max_memory else None
    out = {}
    for e in evals:
        if limit_params is not None and e.params_fraction > limit_params:
            out[e.id] = f"keeps {e.params_fraction:.3f} of the parameters, over --max-params ({limit_params:.3f})"
        elif limit_memory is not None and (m := memory.cost(e.levels).memory_bytes) > limit_memory:
            out[e.id] = f"needs {size_text(m)} of memory, over --max-memory {budget.max_memory}"
        elif budget.max_latency_ms is not None and latency[e.id] > budget.max_latency_ms:
            out[e.id] = f"takes {latency[e.id]:.3g} ms (predicted), over --max-latency-ms {budget.max_latency_ms:g}"
    return out, latency


def under_budget(
    run: Run, evals: list[Evaluation], budget: Budget, metric: str | None = None
) -> tuple[list[Evaluation], dict[int, float]]:
    """(the successful ``evals`` that meet ``budget`` and measured ``metric`` when given, their
    predicted latency by id when ``budget`` bounds latency, else ``{}``).

    When none meets it, raises EvopruneError: ``the budget is impossible`` when even the smallest
    configuration of the space exceeds it (``CostEvaluator.check_feasible``, the check a search
    runs first), else that no evaluated configuration meets it and how to search for one.
    """
    budget.check()
    evals = [e for e in evals if e.status == "ok" and (metric is None or metric in e.metrics)]
    over, latency = breaches(run, evals, budget)
    under = [e for e in evals if e.id not in over]
    if under:
        return under, latency
    # An impossible budget says so: no search could find a configuration under it.
    cost_evaluator(run, latency=budget.max_latency_ms is not None).check_feasible(
        Budget(budget.max_params, budget.max_memory, budget.max_latency_ms)
    )
    text = budget_text(budget)
    if evals and budget.max_memory is None and budget.max_latency_ms is None:  # a parameter budget alone
        raise EvopruneError(
            f"no evaluated configuration keeps at most {budget.params_fraction_limit(run.dense_params):.3f} of the "
            f"parameters (the smallest keeps {min(e.params_fraction for e in evals):.3f}): raise --max-params, "
            "or run 'evoprune plan' with it and --spend N to search for one"
        )
    raise EvopruneError(
        f"no evaluated configuration meets the budget ({text}): run 'evoprune plan' with it and --spend N "
        "to search for one"
    )


def best_under_budget(
    run: Run, evals: list[Evaluation], budget: Budget, metric: str
) -> tuple[Evaluation, list[Evaluation], dict[int, float]]:
    """(the lowest-``metric`` evaluation of ``evals`` meeting ``budget``, by the highest rung each
    reached; every one meeting it; their latency as :func:`under_budget` gives it).

    ``evals``: what a plan chooses from, ``Store.problem_evaluations(run, status="ok")``.
    """
    under, latency = under_budget(run, evals, budget, metric)
    return best_of(under, metric, rung_offsets(evals, metric)), under, latency


def pick_evaluation(store: Store, run: Run, pick: str, budget: Budget | float | None = None) -> Evaluation:
    """Resolve ``pick`` (an evaluation id, ``knee`` or ``best``) to a successful evaluation.

    ``budget``: a ``Budget``, or a ``--max-params`` value (a kept fraction or a count). With one,
    ``best`` and ``knee`` choose under it and an id must meet it; without, ``best`` and ``knee``
    choose under the budget the run searched under (:func:`recorded_budget`, parameters, memory
    and latency alike), if any, and an id may be any.

    ``best`` is the answer ``evoprune plan`` gives for that budget: the best quality (the run's
    first quality objective, at the highest fidelity each reached) among the configurations every
    run of the same problem evaluated. ``knee`` is the knee of the run's front (over its own
    evaluations and the pairs it shares, ``Store.shared_evaluations``) under the budget; an id is
    one of those evaluations. Raises EvopruneError when nothing meets the budget, for a bad budget
    and for an id the run does not have.
    """
    names = run_objectives(run)
    metric = next(n for n in names if is_quality(n))
    evals = store.shared_evaluations(run)
    front = front_of(evals, names)
    if not front:
        raise EvopruneError(f"run {run.id} has no successful evaluation yet: run 'evoprune search' first")
    given = Budget(max_params=budget) if isinstance(budget, (int, float)) else budget
    given = given if has_limit(given) else None
    limits = given or recorded_budget(run)
    if pick == "best":
        if not has_limit(limits):
            raise EvopruneError(
                f"--pick best needs a budget and run {run.id} searched without one: add --max-params FRACTION "
                "(e.g. 0.7), --max-memory SIZE or --max-latency-ms MS, or pass --pick knee (the knee of the front, "
                "which needs no budget)"
            )
        return best_under_budget(run, store.problem_evaluations(run, status="ok"), limits, metric)[0]
    if pick == "knee":
        if has_limit(limits):
            front = front_of(under_budget(run, evals, limits, metric)[0], names)
        if not front:  # rows under the budget that lack a cost objective of the run
            raise EvopruneError(
                f"run {run.id} has no configuration under the budget ({budget_text(limits)}) with every objective "
                "measured: pass --pick ID, or --pick best"
            )
        return front[knee_of(front, metric)]
    try:
        eval_id = int(pick)
    except ValueError:
        raise EvopruneError(f"--pick must be an evaluation id, 'knee' or 'best', got {pick!r}") from None
    match = [e for e in evals if e.id == eval_id]
    if not match:
        raise EvopruneError(f"run {run.id} has no evaluation {eval_id}: see 'evoprune pareto --store {store.path}'")
    if match[0].status != "ok":
        raise EvopruneError(f"evaluation {eval_id} is {match[0].status}, not a usable configuration: pick another")
    if given is not None:
        given.check()
        over = breaches(run, match, given)[0]
        if over:
            raise EvopruneError(
                f"evaluation {eval_id} {over[eval_id]}: pick another, or leave out the budget ({budget_text(given)})"
            )
    return match[0]
