"""The search's surrogate on real features, with the contract checked at every fit and prediction.

``SearchSettings.validate`` test-fits a plugin on synthetic features before anything loads
(``surrogates.contract.check_surrogate``); the real feature count is known only once the model
is loaded, so the search checks again here, at no real cost: a surrogate that returns the wrong
number of predictions, NaN or infinite values, or no std, stops the search with one
``EvopruneError`` line that names it, instead of a traceback, or of NaN stored as a prediction.
The evaluations already made stay in the store, so ``evoprune resume`` continues once it is fixed.
"""

from __future__ import annotations

import numpy as np

from evoprune.errors import EvopruneError
from surrogates import (
    ContractError,
    checked_prediction,
    exception_text,
    make_surrogate,
    parse_surrogate_spec,
    plugin_entry_point,
    surrogate_label,
)

_RESUME = "the evaluations so far are kept in the store: fix it and run 'evoprune resume'"


class CheckedSurrogate:
    """A fitted surrogate whose ``predict`` is checked (shape, finite values, a std when asked)."""

    def __init__(self, spec: str, model) -> None:
        self.spec = spec
        self.model = model
        # A plugin's own failures are reported as such; a built-in's only where they say what is
        # wrong (ValueError), other exceptions are bugs of evoprune and keep their traceback.
        self._catch = Exception if plugin_entry_point(parse_surrogate_spec(spec)[0]) else ValueError

    @classmethod
    def fit(cls, spec: str, random_state: int | None, X: np.ndarray, y: np.ndarray) -> CheckedSurrogate:
        """``make_surrogate(spec, random_state=...).fit(X, y)``, checked."""
        checked = cls(spec, None)
        try:
            model = make_surrogate(spec, random_state=random_state)
            fitted = model.fit(X, y)
        except checked._catch as exc:
            checked._fail(f"failed to fit {X.shape[0]} evaluations ({exception_text(exc)})")
        if fitted is not model:
            checked._fail("breaks the surrogate contract: fit(X, y) did not return the model itself (`return self`)")
        checked.model = model
        return checked

    def predict(self, X, return_std: bool = False):
        n = len(X)
        try:
            result = self.model.predict(X, return_std=True) if return_std else self.model.predict(X)
            mean, std = checked_prediction(result, n, return_std)
        except ContractError as exc:
            self._fail(f"breaks the surrogate contract on the search's features: {exc}")
        except self._catch as exc:
            self._fail(f"failed to predict ({exception_text(exc)})")
        # Like surrogates.Surrogate: never certain (the acquisition divides by it).
        return (mean, np.maximum(std, 1e-9)) if return_std else mean

    def _fail(self, what: str):
        raise EvopruneError(f"{surrogate_label(self.spec)} {what}; {_RESUME}") from None
