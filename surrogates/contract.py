"""The surrogate contract, checked on a surrogate before a search spends anything on it.

A search fits its surrogate only after the initial design was evaluated (minutes to hours of
real evaluations), so a plugin that breaks the contract must be refused before that:
``check_surrogate`` builds it exactly as the search does (``make_surrogate(spec,
random_state=seed)``), fits it on a small synthetic training set shaped like the engine's
features and checks what comes back, in milliseconds. ``checked_prediction`` is the same check
on one ``predict`` result, for callers that use predictions later on real features.

Every failure is a ``ContractError`` (a ``ValueError``) with a one-line message that names the
surrogate, says which part of the contract it broke and how to fix it.
"""

from __future__ import annotations

import numpy as np

from surrogates.base import nonfinite_text
from surrogates.registry import exception_text, first_line, make_surrogate, parse_surrogate_spec, plugin_entry_point

# The engine's features (``evoprune.engine.features.FeatureMap``) of a 2-layer model: 4 * 2 + 3
# columns in [0, 1]. The real count is known only once the model is loaded.
SYNTHETIC_FEATURES = 11
SYNTHETIC_TRAIN_ROWS = 8  # below gbdt's 2 x cv rows: one fit, no cross-validation (milliseconds)
SYNTHETIC_PREDICT_ROWS = 5


class ContractError(ValueError):
    """A surrogate that does not keep the contract of ``surrogates.Surrogate``."""


def surrogate_label(spec: str) -> str:
    """``surrogate plugin 'name' (module:Class)`` for a plugin, ``surrogate 'spec'`` for a built-in."""
    name, _ = parse_surrogate_spec(spec)
    entry = plugin_entry_point(name)
    return f"surrogate plugin {name!r} ({entry})" if entry else f"surrogate {spec!r}"


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"one array of shape {value.shape}"
    return "None" if value is None else f"a {type(value).__name__}"


def _values(what: str, value, n_rows: int, call: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ContractError(f"{call} returned {_describe(value)} as the {what}, not numbers") from None
    if array.shape != (n_rows,):
        raise ContractError(
            f"{call} returned a {what} of shape {array.shape} for {n_rows} rows of X: "
            f"return one value per row, an array of shape ({n_rows},)"
        )
    kinds = nonfinite_text(array)
    if kinds:
        raise ContractError(f"{call} returned a {what} with {kinds}: return finite values")
    if what == "std" and np.any(array < 0):
        raise ContractError(f"{call} returned a negative std: return standard deviations of 0 or more")
    return array


def checked_prediction(result, n_rows: int, return_std: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mean, std)`` of one ``predict(X, return_std=...)`` result for ``n_rows`` rows (std None
    without ``return_std``), or ``ContractError`` saying what is wrong with it."""
    if not return_std:
        return _values("mean", result, n_rows, "predict(X)"), None
    call = "predict(X, return_std=True)"
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ContractError(f"{call} returned {_describe(result)} instead of a (mean, std) pair: return both")
    return _values("mean", result[0], n_rows, call), _values("std", result[1], n_rows, call)


def synthetic_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training features, targets (log-perplexity-like) and features to predict, shaped like the engine's."""
    rng = np.random.default_rng(seed)
    X = rng.random((SYNTHETIC_TRAIN_ROWS + SYNTHETIC_PREDICT_ROWS, SYNTHETIC_FEATURES))
    y = 2.5 + X[:SYNTHETIC_TRAIN_ROWS] @ rng.random(SYNTHETIC_FEATURES) + 0.05 * rng.normal(size=SYNTHETIC_TRAIN_ROWS)
    return X[:SYNTHETIC_TRAIN_ROWS], y, X[SYNTHETIC_TRAIN_ROWS:]


def check_surrogate(spec: str, random_state: int | None = 0, fit: bool = True) -> None:
    """Build surrogate ``spec`` as a search does and, with ``fit``, test-fit it on synthetic data;
    ``ContractError`` (or make_surrogate's ``ValueError`` for an unknown or broken name, a bad
    option) when it would fail in the search."""
    label = surrogate_label(spec)
    try:
        model = make_surrogate(spec, random_state=random_state)
    except ValueError:  # an unknown or broken name, an option it does not have: already one line
        raise
    except TypeError as exc:
        if "random_state" in str(exc):
            raise ContractError(
                f"{label} breaks the surrogate contract: its constructor does not take random_state "
                f"({first_line(exc)}): add a random_state=None parameter (the search passes --seed)"
            ) from None
        raise ContractError(f"{label} could not be constructed ({exception_text(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of third-party code
        raise ContractError(f"{label} could not be constructed ({exception_text(exc)})") from None
    if not fit:
        return
    X, y, X_new = synthetic_data()
    try:
        fitted = model.fit(X, y)
    except Exception as exc:  # noqa: BLE001 - any failure of third-party code
        shape = f"{X.shape[0]} rows x {X.shape[1]} features"
        raise ContractError(
            f"{label} failed to fit a synthetic training set of {shape} ({exception_text(exc)})"
        ) from None
    if fitted is not model:
        raise ContractError(
            f"{label} breaks the surrogate contract: fit(X, y) returned {_describe(fitted)} instead of "
            "the model itself: end fit with `return self`"
        )
    for return_std in (True, False):
        try:
            result = model.predict(X_new, return_std=True) if return_std else model.predict(X_new)
            checked_prediction(result, len(X_new), return_std)
        except ContractError as exc:
            raise ContractError(f"{label} breaks the surrogate contract: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code
            call = "predict(X, return_std=True)" if return_std else "predict(X)"
            raise ContractError(
                f"{label} failed in {call} after a fit on synthetic data ({exception_text(exc)})"
            ) from None
