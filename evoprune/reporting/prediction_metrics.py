"""How good predictions with an uncertainty are: ranking (Kendall tau overall and within equal-cost
bins, Spearman rho), error (RMSE), calibration (Gaussian NLL, interval coverage), and the
uncertainty of those figures themselves (bootstrap intervals of tau, Wilson intervals of coverage).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BIN_WIDTH = 0.05


MIN_BIN_PAIRS = 3


COVERAGE_LEVEL = 0.9


# Below this many points a bootstrap interval of Kendall tau is degenerate (a handful of
# concordant points resample to tau = 1 every time): no interval is claimed.
MIN_TAU_POINTS = 10


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


# -- the uncertainty of the figures -------------------------------------------------------------
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


def nan_to_none(obj):
    """``obj`` with every non-finite float (in dicts, lists and tuples too) as None, for JSON."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


def number_text(value: float | None, spec: str = ".2f") -> str:
    """``value`` written with ``spec``, or ``-`` when it is missing or NaN (a figure the data left undefined)."""
    return "-" if value is None or value != value else format(value, spec)
