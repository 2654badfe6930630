"""Probabilistic regressors that predict a configuration's quality with an uncertainty.

This package depends on no other package of evoprune: it sees plain feature matrices.
Every surrogate follows the scikit-learn estimator contract and is registered by name::

    from surrogates import make_surrogate
    model = make_surrogate("ngboost", random_state=0).fit(X, y)
    mean, std = model.predict(X_new, return_std=True)

Third parties register their own through the ``evoprune.surrogates`` entry-point group.
"""

from surrogates.base import Surrogate, check_training_data
from surrogates.registry import ENTRY_POINT_GROUP, available_surrogates, make_surrogate, register_surrogate

# Importing the built-in plugins registers them.
from surrogates import ngboost_surrogate as _ngboost  # noqa: E402,F401  isort: skip
from surrogates import gp_surrogate as _gp  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "Surrogate",
    "available_surrogates",
    "check_training_data",
    "make_surrogate",
    "register_surrogate",
]
