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
from scipy import stats
from sklearn.model_selection import KFold

from evoprune.backend.importance import Importance, importance_cache_key
from evoprune.cache import cache_dir
from evoprune.errors import EvopruneError
from evoprune.features import FeatureMap
from evoprune.objectives import is_quality, quality_value
from evoprune.pareto import run_objectives
from evoprune.space import SearchSpace
from evoprune.store import Evaluation, Run, Store
from surrogates import available_surrogates, make_surrogate

BIN_WIDTH = 0.05
MIN_BIN_PAIRS = 3
COVERAGE_LEVEL = 0.9
MIN_PAIRS = 6
# Below this many points a bootstrap interval of Kendall tau is degenerate (a handful of
# concordant points resample to tau = 1 every time): no interval is claimed.
MIN_TAU_POINTS = 10

Featurize = Callable[[np.ndarray], np.ndarray]


# -- metrics -------------------------------------------------------------------------------------
def kendall_tau(actual, predicted) -> float:
    """Kendall tau-b; 0 when the predictions are all equal (no ranking at all), NaN when the
    actual values are (nothing to rank)."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    if len(actual) < 2 or np.ptp(actual) == 0:
        return float("nan")
    if np.ptp(predicted) == 0:
        return 0.0
    return float(stats.kendalltau(actual, predicted).statistic)


def spearman_rho(actual, predicted) -> float:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    if len(actual) < 2 or np.ptp(actual) == 0:
        return float("nan")
    if np.ptp(predicted) == 0:
        return 0.0
    return float(stats.spearmanr(actual, predicted).statistic)


def cost_bins(cost, width: float = BIN_WIDTH) -> np.ndarray:
    """Bin index of each kept parameter fraction; the small epsilon keeps 0.95 in the 0.95 bin."""
    return np.floor(np.asarray(cost, float) / width + 1e-9).astype(int)


def within_cost_tau(
    actual, predicted, cost, width: float = BIN_WIDTH, min_pairs: int = MIN_BIN_PAIRS
) -> tuple[float, int]:
    """Pair-count-weighted mean Kendall tau inside equal-cost bins, and the number of bins used.

    NaN (and 0 bins) when no bin has ``min_pairs`` pairs with distinct actual values.
    """
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    bins = cost_bins(cost, width)
    taus, weights = [], []
    for b in np.unique(bins):
        members = bins == b
        if members.sum() < min_pairs:
            continue
        tau = kendall_tau(actual[members], predicted[members])
        if np.isfinite(tau):
            taus.append(tau)
            weights.append(members.sum())
    if not taus:
        return float("nan"), 0
    return float(np.average(taus, weights=weights)), len(taus)


def gaussian_nll(actual, mean, std) -> float:
    """Mean negative log-likelihood of ``actual`` under independent Normal(mean, std)."""
    actual, mean, std = (np.asarray(a, float) for a in (actual, mean, std))
    std = np.maximum(std, 1e-9)
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((actual - mean) / std) ** 2))


def interval_coverage(actual, mean, std, level: float = COVERAGE_LEVEL) -> float:
    """Share of ``actual`` inside the central ``level`` interval of Normal(mean, std)."""
    z = stats.norm.ppf(0.5 + level / 2)
    actual, mean, std = (np.asarray(a, float) for a in (actual, mean, std))
    return float(np.mean(np.abs(actual - mean) <= z * std))


def prediction_scores(actual, mean, std, cost) -> dict:
    """Every figure of the report for one set of predictions."""
    actual, mean = np.asarray(actual, float), np.asarray(mean, float)
    within, n_bins = within_cost_tau(actual, mean, cost)
    return {
        "n": int(len(actual)),
        "kendall_tau": kendall_tau(actual, mean),
        "within_cost_tau": within,
        "cost_bins": n_bins,
        "spearman_rho": spearman_rho(actual, mean),
        "rmse": float(np.sqrt(np.mean((actual - mean) ** 2))),
        "nll": gaussian_nll(actual, mean, std),
        "coverage90": interval_coverage(actual, mean, std),
    }


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPairs:
    """A run's successful evaluations as arrays: levels, log-perplexity, kept parameter fraction."""

    evaluations: list[Evaluation]
    levels: np.ndarray
    log_ppl: np.ndarray
    cost: np.ndarray


def run_pairs(store: Store, run: Run) -> RunPairs:
    ok = [e for e in store.evaluations(run.id, "ok") if np.isfinite(e.metrics.get("ppl", np.nan))]
    levels = np.array([e.levels for e in ok], dtype=int).reshape(len(ok), -1)
    log_ppl = np.log(np.array([e.metrics["ppl"] for e in ok], dtype=float))
    cost = np.array([e.params_fraction for e in ok], dtype=float)
    return RunPairs(ok, levels, log_ppl, cost)


class LevelsAndFraction:
    """Features from the stored run alone: levels scaled by their top level, and the exact kept
    parameter fraction. Cheaper but weaker than the engine's ``FeatureMap``, which also knows
    how much importance each level removes."""

    label = "levels + kept parameter fraction"

    def __init__(self, space: SearchSpace):
        self.space = space
        upper = space.upper
        self._scale = np.where(upper > 0, upper, 1).astype(float)

    def __call__(self, X) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=int))
        return np.column_stack([X / self._scale, self.space.params_matrix(X) / self.space.arch.dense_params()])


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
    path = cache_dir("importance") / f"{key}.safetensors"
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


# -- the search's own predictions ---------------------------------------------------------------
def bootstrap_kendall_tau(
    actual, predicted, level: float = COVERAGE_LEVEL, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Central ``level`` percentile interval and standard deviation of Kendall tau-b over
    ``resamples`` bootstrap resamples of the pairs; NaNs when fewer than 3 pairs.

    Vectorised: tau-b of a resample is the sum of the sign products of its pairs over the root of
    the pairs untied in each variable, read from the full sign matrices.
    """
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    n = len(actual)
    if n < 3:
        return float("nan"), float("nan"), float("nan")
    sx = np.sign(actual[:, None] - actual[None, :])
    sy = np.sign(predicted[:, None] - predicted[None, :])
    rng = np.random.default_rng(seed)
    taus = []
    chunk = max(1, 4_000_000 // (n * n))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        a, b = sx[idx[:, :, None], idx[:, None, :]], sy[idx[:, :, None], idx[:, None, :]]
        untied_a, untied_b = (a * a).sum(axis=(1, 2)), (b * b).sum(axis=(1, 2))
        tau = (a * b).sum(axis=(1, 2)) / np.sqrt(np.maximum(untied_a * untied_b, 1))
        # As kendall_tau: all predictions tied ranks nothing (0); all measurements tied has no tau.
        taus.append(np.where(untied_a > 0, np.where(untied_b > 0, tau, 0.0), np.nan))
    taus = np.concatenate(taus)
    taus = taus[np.isfinite(taus)]
    if not len(taus):
        return float("nan"), float("nan"), float("nan")
    low, high = np.quantile(taus, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high), float(np.std(taus, ddof=1)) if len(taus) > 1 else float("nan")


def wilson_interval(hits: int, n: int, level: float = COVERAGE_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``hits`` of ``n``); NaNs when ``n`` is 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _target_label(objective: str) -> str:
    return {"ppl": "log perplexity", "kl": "log KL divergence"}.get(objective, f"negative {objective}")


def _measured_se(objective: str, metrics: dict) -> float | None:
    """Standard error of the measured value on the minimised scale (delta method for the logs)."""
    se = metrics.get(f"{objective}_se")
    if se is None:
        return None
    if objective in ("ppl", "kl"):
        return float(se) / max(float(metrics[objective]), 1e-8)
    return float(se)


def pooled_figures(actual, mean, std, level: float = COVERAGE_LEVEL, resamples: int = 1000, seed: int = 0) -> dict:
    """Rank agreement and calibration of ``mean``/``std`` against ``actual``, each with its uncertainty.

    ``kendall_tau`` with ``tau_low``/``tau_high`` (percentile bootstrap interval at ``level``) and
    ``tau_se`` (bootstrap standard deviation), interval and deviation NaN under ``MIN_TAU_POINTS`` points;
    ``coverage``: share of ``actual`` inside the central ``level`` interval of Normal(mean, std),
    with ``coverage_low``/``coverage_high`` (Wilson, at ``level``); ``rmse``.
    """
    actual, mean, std = (np.asarray(a, float) for a in (actual, mean, std))
    n = len(actual)
    z = stats.norm.ppf(0.5 + level / 2)
    hits = int(np.sum(np.abs(actual - mean) <= z * std))
    low, high, se = (
        bootstrap_kendall_tau(actual, mean, level, resamples, seed) if n >= MIN_TAU_POINTS else (np.nan,) * 3
    )
    c_low, c_high = wilson_interval(hits, n, level)
    return {
        "n": n,
        "kendall_tau": kendall_tau(actual, mean) if n >= 2 else float("nan"),
        "tau_low": low,
        "tau_high": high,
        "tau_se": se,
        "inside": hits,
        "coverage": hits / n if n else float("nan"),
        "coverage_low": c_low,
        "coverage_high": c_high,
        "rmse": float(np.sqrt(np.mean((actual - mean) ** 2))) if n else float("nan"),
    }


@dataclass
class SearchPredictions:
    """The predictions the search made before evaluating each acquired candidate, next to what
    it then measured, on the surrogate's own scale (``target``: log perplexity for ``ppl``).

    ``points``: one per acquired evaluation (id, round, predicted, std, lower, upper, measured,
    measured_se, inside); ``pooled``: :func:`pooled_figures` over all of them; ``by_round``: the
    same over every acquired evaluation up to and including each round.
    """

    run_id: int
    objective: str
    target: str
    level: float
    surrogate: str | None
    points: list[dict]
    pooled: dict
    by_round: list[dict]

    def to_dict(self) -> dict:
        return _nan_to_none(asdict(self))


def search_predictions(
    store: Store,
    run: Run | int | None = None,
    level: float = COVERAGE_LEVEL,
    resamples: int = 1000,
    seed: int = 0,
) -> SearchPredictions | None:
    """How well the search's own surrogate predicted what it then measured; ``None`` when the
    run stored no predictions (a baseline, or no round yet).

    Every successful evaluation with a stored prediction of the run's first quality objective
    counts once, measured on the first rung (what the surrogate is trained on). The interval is
    the central ``level`` interval of Normal(predicted, std).
    """
    run = _resolve_run(store, run)
    objective = next((n for n in run_objectives(run) if is_quality(n)), "ppl")
    z = float(stats.norm.ppf(0.5 + level / 2))
    points = []
    for e in store.evaluations(run.id, "ok"):
        pred = e.predicted or {}
        if objective not in pred or "std" not in pred:
            continue
        measured = quality_value(objective, e.metrics)
        mean, std = float(pred[objective]), float(pred["std"])
        if not (np.isfinite(measured) and np.isfinite(mean) and np.isfinite(std)):
            continue
        points.append(
            {
                "id": e.id,
                "round": e.round,
                "predicted": mean,
                "std": std,
                "lower": mean - z * std,
                "upper": mean + z * std,
                "measured": measured,
                "measured_se": _measured_se(objective, e.metrics),
                "inside": bool(abs(measured - mean) <= z * std),
            }
        )
    if not points:
        return None

    def figures(subset: list[dict]) -> dict:
        return pooled_figures(
            [p["measured"] for p in subset], [p["predicted"] for p in subset], [p["std"] for p in subset],
            level, resamples, seed,
        )  # fmt: skip

    rounds = sorted({p["round"] for p in points})
    by_round = [{"round": r, **figures([p for p in points if p["round"] <= r])} for r in rounds]
    return SearchPredictions(
        run_id=run.id,
        objective=objective,
        target=_target_label(objective),
        level=level,
        surrogate=run.settings.get("surrogate"),
        points=points,
        pooled=figures(points),
        by_round=by_round,
    )


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
    # Figures of the predictions the search recorded before evaluating each candidate.
    recorded: dict | None = None
    recorded_surrogate: str | None = None
    # The same predictions next to their measurements, with pooled tau and coverage and their intervals.
    search_predictions: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        # JSON has no NaN: a figure that does not exist is null.
        return _nan_to_none(d)


def _nan_to_none(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _predicted_log_ppl(predicted: dict | None) -> tuple[float, float] | None:
    """(log-ppl, std) from a stored prediction. The search stores its primary quality on the
    minimised scale (``{"ppl": log ppl, "std": ...}``); ``log_ppl`` is accepted as well."""
    if not predicted or "std" not in predicted:
        return None
    for key in ("log_ppl", "ppl"):
        if key in predicted:
            return float(predicted[key]), float(predicted["std"])
    return None


def recorded_predictions(pairs: RunPairs) -> dict | None:
    """Scores of the predictions the search stored with each candidate before evaluating it."""
    rows = [(i, _predicted_log_ppl(e.predicted)) for i, e in enumerate(pairs.evaluations)]
    rows = [(i, p) for i, p in rows if p is not None]
    if not rows:
        return None
    idx = np.array([i for i, _ in rows])
    mean = np.array([p[0] for _, p in rows], dtype=float)
    std = np.array([p[1] for _, p in rows], dtype=float)
    return prediction_scores(pairs.log_ppl[idx], mean, std, pairs.cost[idx])


def _resolve_run(store: Store, run: Run | int | None) -> Run:
    return run if isinstance(run, Run) else store.get_run(run)


def surrogate_report(
    store: Store,
    run: Run | int | None = None,
    names: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    featurize: Featurize | None = None,
) -> SurrogateReport:
    """Cross-validate every surrogate in ``names`` (default: all registered) on a run's pairs.

    ``run`` is a ``Run``, a run id, or ``None`` for the latest run. ``featurize`` maps a level
    matrix to the surrogate's features; by default levels plus kept parameter fraction.
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
    n = len(pairs.log_ppl)
    if n < max(MIN_PAIRS, folds):
        raise EvopruneError(
            f"run {run.id} has {n} successful evaluations, too few for {folds}-fold cross-validation "
            f"(need at least {max(MIN_PAIRS, folds)}): continue the search with a larger --evals or lower --folds"
        )
    if featurize is None:
        featurize = LevelsAndFraction(SearchSpace.from_dict(run.space))
    X = np.asarray(featurize(pairs.levels), dtype=float)
    scores = [score_surrogate(name, X, pairs.log_ppl, pairs.cost, folds, seed) for name in names]
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
        recorded=recorded_predictions(pairs),
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
