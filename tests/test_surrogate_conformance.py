"""The contract every registered surrogate keeps, built-in or plugin.

Everything is parametrised over ``available_surrogates()``, so a plugin installed through the
``evoprune.surrogates`` entry-point group is checked by this file without any change to it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from surrogates import LevelFeatures, Surrogate, available_surrogates, make_surrogate


def _data(n=40, d=6, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 5, size=(n, d)).astype(float)
    y = X @ rng.normal(size=d) + noise * rng.normal(size=n)
    return X, y


@pytest.fixture(params=available_surrogates())
def name(request):
    return request.param


def test_fit_returns_self_and_predicts_mean_and_positive_std(name):
    X, y = _data()
    model = make_surrogate(name, random_state=0)
    assert isinstance(model, Surrogate)
    assert model.fit(X, y) is model
    mean, std = model.predict(X[:7], return_std=True)
    assert mean.shape == std.shape == (7,)
    assert np.all(np.isfinite(mean)) and np.all(std > 0)
    assert np.array_equal(model.predict(X[:7]), mean)
    single_mean, single_std = model.predict(X[:1], return_std=True)
    assert single_mean.shape == single_std.shape == (1,)


def test_learns_a_signal_on_held_out_rows(name):
    X, y = _data(n=120)
    model = make_surrogate(name, random_state=0).fit(X[:80], y[:80])
    assert stats.kendalltau(model.predict(X[80:]), y[80:]).statistic > 0.6


def test_uncertainty_is_not_overconfident_on_held_out_rows(name):
    """A std that collapses (NGBoost with default settings did) would make acquisition trust
    every prediction; on fresh rows of a noisy signal the 90% interval must cover most of them."""
    X, y = _data(n=120, noise=0.5)
    mean, std = make_surrogate(name, random_state=0).fit(X[:80], y[:80]).predict(X[80:], return_std=True)
    coverage = np.mean(np.abs(y[80:] - mean) <= 1.645 * std)
    assert coverage >= 0.6, f"90% interval covers only {coverage:.0%} of held-out rows"


def test_deterministic_under_a_seed_and_clonable(name):
    X, y = _data()
    a = make_surrogate(name, random_state=3).fit(X, y).predict(X, return_std=True)
    b = clone(make_surrogate(name, random_state=3)).fit(X, y).predict(X, return_std=True)
    np.testing.assert_array_equal(a, b)
    params = make_surrogate(name, random_state=3).get_params()
    assert clone(make_surrogate(name).set_params(**params)).get_params() == params
    fitted = make_surrogate(name, random_state=3).fit(X, y)
    unfitted = clone(fitted)
    assert unfitted.get_params() == fitted.get_params()
    with pytest.raises(ValueError, match="not fitted"):
        unfitted.predict(X)


def test_tiny_and_constant_training_sets(name):
    X, y = _data(n=5)
    mean, std = make_surrogate(name).fit(X, y).predict(X, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)
    mean, std = make_surrogate(name).fit(X, np.full(5, 2.0)).predict(_data(n=9, seed=1)[0], return_std=True)
    np.testing.assert_allclose(mean, 2.0, atol=1e-2)
    assert np.all(np.isfinite(std)) and np.all(std > 0)


def test_rejects_bad_input_with_a_clear_error(name):
    X, y = _data()
    for bad_value in (np.nan, np.inf):
        bad = X.copy()
        bad[0, 0] = bad_value
        with pytest.raises(ValueError, match="NaN or infinite"):
            make_surrogate(name).fit(bad, y)
        y_bad = y.copy()
        y_bad[1] = bad_value
        with pytest.raises(ValueError, match="NaN or infinite"):
            make_surrogate(name).fit(X, y_bad)
    model = make_surrogate(name).fit(X, y)
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict(bad)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="rows"):
        make_surrogate(name).fit(X, y[:-1])
    with pytest.raises(ValueError, match="not fitted"):
        make_surrogate(name).predict(X)


def test_works_behind_level_features_in_a_pipeline(name):
    X, y = _data(n=30, d=8)
    pipe = make_pipeline(LevelFeatures(n_groups=2, upper=4), make_surrogate(name, random_state=0)).fit(X, y)
    mean, std = pipe.predict(X[:4], return_std=True)
    assert mean.shape == std.shape == (4,) and np.all(std > 0)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*ngboost"):
        make_surrogate("nope")
