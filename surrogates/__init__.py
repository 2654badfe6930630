"""Probabilistic regressors that predict a configuration's quality with an uncertainty.

This package depends on no other package of evoprune: it sees plain feature matrices.
Every surrogate follows the scikit-learn estimator contract and is registered by name::

    from surrogates import make_surrogate
    model = make_surrogate("ngboost", random_state=0).fit(X, y)
    mean, std = model.predict(X_new, return_std=True)

Built-in surrogates: ``additive`` (monotone additive damage with a compounding link),
``ngboost``, ``gp``, ``forest``, ``xgboost``, ``gbdt`` (point predictor with a constant std,
the paper's baseline) and ``ensemble`` (a mixture of others). Targets are
whatever the caller passes; the engine passes log-perplexity, on which pruning damage is
closer to additive and errors are relative, and every surrogate standardises targets itself.
Feature maps (what a surrogate sees for a configuration) are the engine's: ``evoprune.engine.features``.

Each built-in imports its third-party library (NGBoost, XGBoost, scikit-learn's models) only
when it is fitted, so importing this package, and with it the command line, stays cheap.

Third parties register their own through the ``evoprune.surrogates`` entry-point group (see
``surrogates.registry``); ``tests/test_surrogate_conformance.py`` checks every registered one,
and every search first test-fits a plugin on synthetic data (``surrogates.contract``), so one
that breaks the contract is refused before anything is evaluated.
"""

from surrogates.base import Surrogate, check_features, check_training_data
from surrogates.contract import ContractError, check_surrogate, checked_prediction, surrogate_label
from surrogates.registry import (
    ENTRY_POINT_GROUP,
    SurrogatePluginWarning,
    available_surrogates,
    exception_text,
    first_line,
    make_surrogate,
    parse_surrogate_spec,
    plugin_entry_point,
    register_surrogate,
)

# Importing the built-in plugins registers them.
from surrogates import ngboost_surrogate as _ngboost  # noqa: E402,F401  isort: skip
from surrogates import gp_surrogate as _gp  # noqa: E402,F401  isort: skip
from surrogates import forest_surrogate as _forest  # noqa: E402,F401  isort: skip
from surrogates import xgboost_surrogate as _xgboost  # noqa: E402,F401  isort: skip
from surrogates import gbdt_surrogate as _gbdt  # noqa: E402,F401  isort: skip
from surrogates import additive_surrogate as _additive  # noqa: E402,F401  isort: skip
from surrogates import ensemble_surrogate as _ensemble  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "ContractError",
    "Surrogate",
    "SurrogatePluginWarning",
    "available_surrogates",
    "check_features",
    "check_surrogate",
    "check_training_data",
    "checked_prediction",
    "exception_text",
    "first_line",
    "make_surrogate",
    "parse_surrogate_spec",
    "plugin_entry_point",
    "register_surrogate",
    "surrogate_label",
]
