"""The surrogate interface, checked for every registered surrogate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from surrogates import Surrogate, available_surrogates, make_surrogate


def _data(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 5, size=(n, d)).astype(float)
    y = X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
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
    assert np.all(std > 0)
    assert np.array_equal(model.predict(X[:7]), mean)


def test_learns_a_signal(name):
    X, y = _data(n=80)
    model = make_surrogate(name, random_state=0).fit(X, y)
    corr = np.corrcoef(model.predict(X), y)[0, 1]
    assert corr > 0.8


def test_deterministic_under_a_seed_and_clonable(name):
    X, y = _data()
    a = make_surrogate(name, random_state=3).fit(X, y).predict(X, return_std=True)
    b = clone(make_surrogate(name, random_state=3)).fit(X, y).predict(X, return_std=True)
    np.testing.assert_allclose(a, b)
    params = make_surrogate(name, random_state=3).get_params()
    assert clone(make_surrogate(name).set_params(**params)).get_params() == params


def test_tiny_and_constant_training_sets(name):
    X, y = _data(n=5)
    mean, std = make_surrogate(name).fit(X, y).predict(X, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(std > 0)
    mean, std = make_surrogate(name).fit(X, np.full(5, 2.0)).predict(X, return_std=True)
    np.testing.assert_allclose(mean, 2.0, atol=1e-2)
    assert np.all(std > 0)


def test_rejects_bad_input_with_a_clear_error(name):
    X, y = _data()
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_surrogate(name).fit(bad, y)
    y_bad = y.copy()
    y_bad[1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_surrogate(name).fit(X, y_bad)
    model = make_surrogate(name).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="not fitted"):
        make_surrogate(name).predict(X)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*ngboost"):
        make_surrogate("nope")


def test_ngboost_fast_prediction_equals_the_library_path():
    X, y = _data(n=60)
    model = make_surrogate("ngboost", random_state=0).fit(X, y)
    mean, std = model.predict(X, return_std=True)
    dist = model.model_.pred_dist(X)
    np.testing.assert_allclose(mean, dist.params["loc"] * model.y_scale_ + model.y_offset_, rtol=1e-10)
    np.testing.assert_allclose(std, dist.params["scale"] * model.y_scale_, rtol=1e-10)
