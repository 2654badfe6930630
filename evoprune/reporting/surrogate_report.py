"""How well each surrogate predicts a run's real evaluations.

The search only needs a surrogate to *rank* configurations, above all configurations of equal
size (NSGA-II compares them along the cost axis), and to know when it does not know (the
acquisition step spends evaluations where the std is large). So the report gives, per
surrogate and from ``folds``-fold cross-validation on the run's ``ok`` pairs:

- Kendall tau over all pairs, and within equal-cost groups: pairs binned by kept parameter
  fraction in bins ``BIN_WIDTH`` wide, tau per bin with at least ``MIN_BIN_PAIRS`` pairs, and
  the mean over those bins weighted by their pair count;
- Spearman rho and RMSE of the predicted log-perplexity;
- Gaussian negative log-likelihood and the coverage of the central 90% interval (0.9 is
  calibrated; lower means the std is overconfident);
- the mean time of one fit.

It also scores the predictions the search itself recorded for each acquired candidate before
evaluating it: the only truly out-of-sample figures, made by the surrogate the run used.

Features must be the search's: pass ``featurize`` (e.g. the engine's ``FeatureMap``) when the
importance scores are at hand; without it the report uses the levels and the kept parameter
fraction, which the stored search space gives exactly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from safetensors.numpy import load_file
from sklearn.model_selection import KFold

from evoprune.backend.importance import Importance, importance_cache_key
from evoprune.backend.importance_cache import importance_cache_file
from evoprune.engine.features import FeatureMap, LevelsAndFraction
from evoprune.engine.settings import ProgressFn, log_progress
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import quality_objective
from evoprune.objectives.spec import quality_value
from evoprune.reporting.prediction_metrics import MIN_BIN_PAIRS, cost_bins, nan_to_none, prediction_scores
from evoprune.reporting.search_predictions import search_predictions, target_label
from evoprune.space import SearchSpace
from evoprune.store import Evaluation, Run, Store
from surrogates import available_surrogates, make_surrogate

MIN_PAIRS = 6

Featurize = Callable[[np.ndarray], np.ndarray]


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPairs:
    """A run's successful evaluations as arrays: levels (n, n_var), ``target`` (n,), the run's
    first quality ``objective`` on the scale its surrogate learns (``quality_value``: log
    perplexity for ``ppl``, log KL for ``kl``, minus the accuracy for ``acc:TASK``), and the kept
    parameter fraction ``cost`` (n,)."""

    evaluations: list[Evaluation]
    levels: np.ndarray
    target: np.ndarray
    cost: np.ndarray
    objective: str = "ppl"


def run_pairs(store: Store, run: Run) -> RunPairs:
    """The pairs ``run``'s search learns from (``Store.shared_evaluations``: with warm start, those
    of the other evoprune runs of its problem too) that measured its first quality objective."""
    objective = quality_objective(run)
    shared = [e for e in store.shared_evaluations(run) if e.status == "ok"]
    values = [quality_value(objective, e.metrics) for e in shared]
    ok = [e for e, v in zip(shared, values, strict=True) if np.isfinite(v)]
    levels = np.array([e.levels for e in ok], dtype=int).reshape(len(ok), -1)
    target = np.array([v for v in values if np.isfinite(v)], dtype=float)
    cost = np.array([e.params_fraction for e in ok], dtype=float)
    return RunPairs(ok, levels, target, cost, objective)


def cached_feature_map(run: Run) -> FeatureMap | None:
    """The search's own ``FeatureMap`` for ``run``, if its importance scores are in the cache.

    The search caches the scores under a key made of what the run records (model and data
    fingerprints, criterion, calibration tokens), so on the machine that ran the search the
    report gets the exact features without loading the model. ``None`` when they are not there.
    """
    backend = run.settings.get("backend", {})
    if "criterion" not in backend or "calib_tokens" not in backend:
        return None
    criterion, tokens = backend["criterion"], backend["calib_tokens"]
    key = importance_cache_key(run.model_fingerprint, run.data_fingerprint, criterion, tokens)
    path = importance_cache_file(key)
    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
        feature_map = FeatureMap(SearchSpace.from_dict(run.space), Importance(attn=arrays["attn"], mlp=arrays["mlp"]))
    except Exception:  # noqa: BLE001 - a damaged or mismatched cache entry just means "not available"
        return None
    feature_map.label = f"engine FeatureMap ({criterion} importance from the cache)"
    return feature_map


def featurize_label(featurize: Featurize) -> str:
    return getattr(featurize, "label", None) or getattr(featurize, "__name__", None) or type(featurize).__name__


# -- cross-validation ----------------------------------------------------------------------------
@dataclass
class SurrogateScore:
    """Cross-validated figures of one surrogate (``error`` set instead when it failed)."""

    name: str
    kendall_tau: float = float("nan")
    within_cost_tau: float = float("nan")
    cost_bins: int = 0
    spearman_rho: float = float("nan")
    rmse: float = float("nan")
    nll: float = float("nan")
    coverage90: float = float("nan")
    fit_s: float = float("nan")
    n: int = 0
    error: str | None = None


def cross_validated_predictions(
    name: str, X: np.ndarray, y: np.ndarray, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Out-of-fold mean and std of every row, and the mean seconds per fit."""
    mean, std = np.empty(len(y)), np.empty(len(y))
    fit_times = []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        t0 = time.perf_counter()
        model = make_surrogate(name, random_state=seed).fit(X[train], y[train])
        fit_times.append(time.perf_counter() - t0)
        mean[test], std[test] = model.predict(X[test], return_std=True)
    return mean, std, float(np.mean(fit_times))


def score_surrogate(name: str, X: np.ndarray, y: np.ndarray, cost: np.ndarray, folds: int, seed: int) -> SurrogateScore:
    try:
        mean, std, fit_s = cross_validated_predictions(name, X, y, folds, seed)
    except Exception as exc:  # noqa: BLE001 - a failing (third-party) surrogate is a row, not a crash
        return SurrogateScore(name, error=f"{type(exc).__name__}: {exc}")
    return SurrogateScore(name, fit_s=fit_s, **prediction_scores(y, mean, std, cost))


# -- the report ----------------------------------------------------------------------------------
@dataclass
class SurrogateReport:
    run_id: int
    model: str
    n_pairs: int
    folds: int
    seed: int
    features: str
    scores: list[SurrogateScore]
    # What the surrogates predict: the run's first quality objective on the search's scale.
    target: str = "log perplexity"
    # Figures of the predictions the search recorded before evaluating each candidate.
    recorded: dict | None = None
    recorded_surrogate: str | None = None
    # The same predictions next to their measurements, with pooled tau and coverage and their intervals.
    search_predictions: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d = {"run": d.pop("run_id"), **d}  # named as in the JSON of pareto, plan and runs
        # JSON has no NaN: a figure that does not exist is null.
        return nan_to_none(d)


def _predicted_target(predicted: dict | None, objective: str) -> tuple[float, float] | None:
    """(mean, std) on the minimised scale from a stored prediction. The search stores its primary
    quality on that scale (``{"ppl": log ppl, "std": ...}``); ``log_ppl`` is accepted as well."""
    if not predicted or "std" not in predicted:
        return None
    for key in (f"log_{objective}", objective):
        if key in predicted:
            return float(predicted[key]), float(predicted["std"])
    return None


def recorded_predictions(pairs: RunPairs, run_id: int | None = None) -> dict | None:
    """Scores of the predictions the search stored with each candidate before evaluating it; with
    ``run_id``, that run's candidates only (a shared pair's prediction was another run's)."""
    rows = [
        (i, _predicted_target(e.predicted, pairs.objective))
        for i, e in enumerate(pairs.evaluations)
        if run_id is None or e.run_id == run_id
    ]
    rows = [(i, p) for i, p in rows if p is not None]
    if not rows:
        return None
    idx = np.array([i for i, _ in rows])
    mean = np.array([p[0] for _, p in rows], dtype=float)
    std = np.array([p[1] for _, p in rows], dtype=float)
    return prediction_scores(pairs.target[idx], mean, std, pairs.cost[idx])


def _resolve_run(store: Store, run: Run | int | None) -> Run:
    return run if isinstance(run, Run) else store.get_run(run)


def surrogate_report(
    store: Store,
    run: Run | int | None = None,
    names: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    featurize: Featurize | None = None,
    progress: ProgressFn = log_progress,
) -> SurrogateReport:
    """Cross-validate every surrogate in ``names`` (default: all registered) on a run's pairs.

    ``run`` is a ``Run``, a run id, or ``None`` for the latest run. ``featurize`` maps a level
    matrix to the surrogate's features; by default levels plus kept parameter fraction.
    ``progress`` hears a ``phase`` per surrogate (seconds to a minute each).
    """
    run = _resolve_run(store, run)
    known = available_surrogates()
    names = list(known if names is None else names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EvopruneError(f"surrogate {unknown[0]!r} is unknown: use one of {', '.join(known)}")
    if not names:
        raise EvopruneError("no surrogate to report on: name at least one, or leave the list out for all")
    if folds < 2:
        raise EvopruneError(f"--folds must be at least 2, got {folds}")
    pairs = run_pairs(store, run)
    n = len(pairs.target)
    if n < max(MIN_PAIRS, folds):
        raise EvopruneError(
            f"run {run.id} has {n} successful pairs (its own and those it shares), too few for {folds}-fold "
            "cross-validation "
            f"(need at least {max(MIN_PAIRS, folds)}): continue the search with a larger --evals or lower --folds"
        )
    if featurize is None:
        featurize = LevelsAndFraction(SearchSpace.from_dict(run.space))
    X = np.asarray(featurize(pairs.levels), dtype=float)
    scores = []
    for i, name in enumerate(names, 1):
        progress("phase", name=f"cross-validating {name} ({i} of {len(names)}, {folds} folds)")
        scores.append(score_surrogate(name, X, pairs.target, pairs.cost, folds, seed))
    notes = []
    if np.bincount(cost_bins(pairs.cost)).max() < MIN_BIN_PAIRS:
        notes.append(f"no equal-cost bin holds {MIN_BIN_PAIRS} pairs: within-cost tau is undefined")
    return SurrogateReport(
        run_id=run.id,
        model=run.model,
        n_pairs=n,
        folds=folds,
        seed=seed,
        features=featurize_label(featurize),
        scores=scores,
        target=target_label(pairs.objective),
        recorded=recorded_predictions(pairs, run.id),
        recorded_surrogate=run.settings.get("surrogate"),
        search_predictions=own.to_dict() if (own := search_predictions(store, run, seed=seed)) else None,
        notes=notes,
    )


# -- learning curve ------------------------------------------------------------------------------
def learning_curve(
    X: np.ndarray,
    y: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str] | Mapping[str, tuple[str, dict]],
    sizes: Sequence[int],
    holdout: int,
    repeats: int = 5,
    seed: int = 0,
) -> list[dict]:
    """Held-out figures against the number of training pairs.

    ``models`` are registered names, or labels mapped to ``(name, constructor params)`` to
    compare variants of one surrogate. Each repeat shuffles the pairs once, holds out the first
    ``holdout`` and trains on the first ``size`` of the rest, so every size of a repeat is scored
    on the same pairs. Returns one dict per (model, size), figures averaged over the repeats.
    """
    n = len(y)
    if holdout < MIN_BIN_PAIRS or max(sizes) + holdout > n:
        raise EvopruneError(
            f"{n} pairs cannot give {max(sizes)} training and {holdout} held-out pairs: collect more pairs"
        )
    specs = dict(models) if isinstance(models, Mapping) else {name: (name, {}) for name in models}
    rng = np.random.default_rng(seed)
    splits = [rng.permutation(n) for _ in range(repeats)]
    out = []
    for label, (name, params) in specs.items():
        for size in sizes:
            runs = []
            for r, order in enumerate(splits):
                test, train = order[:holdout], order[holdout : holdout + size]
                t0 = time.perf_counter()
                model = make_surrogate(name, random_state=seed + r, **params).fit(X[train], y[train])
                fit_s = time.perf_counter() - t0
                mean, std = model.predict(X[test], return_std=True)
                runs.append({**prediction_scores(y[test], mean, std, cost[test]), "fit_s": fit_s})
            with warnings.catch_warnings():  # a figure undefined in every repeat stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                avg = {k: float(np.nanmean([s[k] for s in runs])) for k in runs[0] if k != "n"}
            out.append({"name": label, "train": size, "holdout": holdout, "repeats": repeats, **avg})
    return out
