"""The contract every registered surrogate keeps, built-in or plugin.

Everything is parametrised over ``available_surrogates()``, so a plugin installed through the
``evoprune.surrogates`` entry-point group is checked by this file without any change to it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

from evoprune.engine.checked_surrogate import CheckedSurrogate
from evoprune.engine.features import LevelFeatures
from evoprune.errors import EvopruneError
from surrogates import ContractError, Surrogate, available_surrogates, check_surrogate, make_surrogate, registry


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


# -- what each built-in promises beyond the contract ---------------------------------------------
def test_gbdt_std_is_its_out_of_fold_error():
    from sklearn.model_selection import KFold

    X, y = _data(n=60, noise=0.5)
    model = make_surrogate("gbdt", random_state=0).fit(X, y)
    _, std = model.predict(X[:5], return_std=True)
    residuals = np.empty_like(y)
    for train, test in KFold(5, shuffle=True, random_state=0).split(X):
        residuals[test] = y[test] - clone(model).fit(X[train], y[train]).predict(X[test])
    np.testing.assert_allclose(std, np.sqrt(np.mean(residuals**2)))


def test_ensemble_is_the_mixture_of_its_members():
    X, y = _data(n=40)
    ens = make_surrogate("ensemble", members=("forest", "gbdt"), weights=(3, 1), random_state=2).fit(X, y)
    parts = [make_surrogate(n, random_state=2).fit(X, y).predict(X[:6], return_std=True) for n in ("forest", "gbdt")]
    (m1, s1), (m2, s2) = parts
    mean, std = ens.predict(X[:6], return_std=True)
    np.testing.assert_allclose(mean, 0.75 * m1 + 0.25 * m2)
    np.testing.assert_allclose(std**2, 0.75 * (s1**2 + m1**2) + 0.25 * (s2**2 + m2**2) - mean**2)
    with pytest.raises(ValueError, match="cannot contain itself"):
        make_surrogate("ensemble", members=("forest", "ensemble")).fit(X, y)
    # As --surrogate options, where ',' separates options: members and weights joined by '+'.
    spec = make_surrogate("ensemble:members=forest+gbdt,weights=3+1", random_state=2).fit(X, y)
    np.testing.assert_allclose(spec.predict(X[:6]), mean)
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        make_surrogate("ensemble:members=forest+gbdt,weights=3", random_state=2).fit(X, y)
    with pytest.raises(ValueError, match="weights must be 1 non-negative numbers"):
        make_surrogate("ensemble:members=forest,weights=inf", random_state=2).fit(X, y)


def test_forest_is_unsure_away_from_its_data():
    X, y = _data(n=60)
    model = make_surrogate("forest", random_state=0).fit(X, y)
    _, near = model.predict(X[:10], return_std=True)
    _, far = model.predict(np.full((10, X.shape[1]), 12.0) * np.sign(np.arange(X.shape[1]) % 2 - 0.5), return_std=True)
    assert np.median(near) < np.median(far)


def test_additive_damage_is_monotone_and_learns_a_compounding_signal():
    """The prior the pruning surrogate rests on: more pruning never predicts a better model,
    and damage that compounds (log ppl convex in the summed damage) is learned from few pairs."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, size=(70, 10)).astype(float)
    sensitivity = np.linspace(0.2, 1.0, 10)  # smooth along the columns, as along the depth
    y = 3.0 + np.expm1(0.15 * X @ sensitivity)
    model = make_surrogate("additive", random_state=0).fit(X[:50], y[:50])
    assert stats.kendalltau(model.predict(X[50:]), y[50:]).statistic > 0.85
    base = rng.integers(0, 3, size=(20, 10)).astype(float)
    for j in range(10):
        more = base.copy()
        more[:, j] += 1
        assert np.all(model.predict(more) >= model.predict(base) - 1e-12)


@pytest.mark.parametrize(("combine", "expected"), [(np.expm1, "log1p"), (np.log1p, "log")])
def test_additive_auto_link_follows_how_damage_combines(combine, expected):
    """Compounding damage (convex in the summed damage) and saturating damage (concave, as in
    the synthetic benchmark problem) each get their own link, and predict no worse than the
    default link with it."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 4, size=(90, 8)).astype(float)
    y = 2.0 + 1.5 * combine(0.25 * X @ rng.uniform(0.2, 1.0, 8))
    auto = make_surrogate("additive:link=auto", random_state=0).fit(X[:60], y[:60])
    assert auto.link_ == expected
    default = make_surrogate("additive", random_state=0).fit(X[:60], y[:60])
    error = {m: np.sqrt(np.mean((m.predict(X[60:]) - y[60:]) ** 2)) for m in (auto, default)}
    assert error[auto] <= error[default]


def test_surrogate_options_in_the_name_reach_the_constructor():
    assert make_surrogate("additive:link=identity,c=1.5,n_members=4").get_params()["c"] == 1.5
    assert make_surrogate("additive:fit_intercept=false").get_params()["fit_intercept"] is False
    with pytest.raises(ValueError, match="has no option 'nope'"):
        make_surrogate("additive:nope=1")
    with pytest.raises(ValueError, match="is not key=value"):
        make_surrogate("additive:link")


def test_ngboost_fast_prediction_equals_the_library_path():
    X, y = _data(n=60)
    model = make_surrogate("ngboost", random_state=0).fit(X, y)
    mean, std = model.predict(X, return_std=True)
    dist = model.model_.pred_dist(X)
    np.testing.assert_allclose(mean, dist.params["loc"] * model.y_scale_ + model.y_offset_, rtol=1e-10)
    np.testing.assert_allclose(std, dist.params["scale"] * model.y_scale_, rtol=1e-10)


def test_level_features_summarise_groups_and_pass_extra_columns_through():
    levels = np.array([[0, 3, 8, 0], [3, 3, 0, 4]], dtype=float)  # 2 layers: attn 0..3, MLP 0..8
    X = np.hstack([levels, [[0.9], [0.7]]])
    t = LevelFeatures(n_groups=2, n_levels=4, upper=[3, 3, 8, 8], depth_bins=2).fit(X)
    out = t.transform(X)
    names = list(t.get_feature_names_out())
    assert out.shape == (2, len(names)) and names[-1] == "x4"
    row = dict(zip(names, out[1], strict=True))
    assert row["g0_mean"] == 1.0 and row["g0_removed"] == 1.0
    assert row["g1_mean"] == 0.25 and row["g1_removed"] == 0.0 and row["g1_depth1"] == 0.5
    assert row["x4"] == 0.7
    with pytest.raises(ValueError, match="equal groups"):
        LevelFeatures(n_groups=3, n_levels=4).fit(X)


def test_a_broken_plugin_is_reported_by_name_and_spares_the_others(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[evoprune.surrogates]\nbroken = no_such_module_here:Model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="'broken'"):
        names = available_surrogates()
    assert "broken" not in names and "ngboost" in names
    with pytest.raises(ValueError, match="plugin 'broken' failed to load.*no_such_module_here"):
        make_surrogate("broken")


def test_additive_extrapolation_stays_finite_and_silent():
    # Trained on mild pruning, asked about far heavier pruning (u >> 1): the compounding link
    # must not overflow to inf (the main job used to print RuntimeWarnings here).
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, size=(30, 4))
    y = 3.0 + np.expm1(2.0 * X.sum(axis=1))
    model = make_surrogate("additive").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, std = model.predict(np.full((3, 4), 400.0), return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    assert np.all(mean > y.max())
    # Past the data it grows linearly, not exponentially: on a few pairs of a collapsing model an
    # exponential continuation predicted log perplexities of 1e23 (surrogate report's RMSE).
    far = model.predict(np.array([[4.0] * 4, [8.0] * 4, [12.0] * 4]))
    assert far[0] < far[1] < far[2]
    assert far[2] - far[1] == pytest.approx(far[1] - far[0], rel=1e-6)


class _NanStd(Surrogate):
    def __init__(self, random_state=None):
        self.random_state = random_state

    def _fit(self, X, y):
        self.mean_ = float(np.mean(y))

    def _predict(self, X):
        return np.full(len(X), self.mean_), np.full(len(X), np.nan)


def test_a_nan_std_is_refused_not_passed_on_as_a_prediction(monkeypatch):
    """np.maximum(std, 1e-9) kept NaN, which the search stored and `plan --json` printed."""
    X, y = _data()
    with pytest.raises(ValueError, match="_NanStd predicted a std with NaN values \\(3 of 3\\)"):
        _NanStd().fit(X, y).predict(X[:3], return_std=True)
    monkeypatch.setitem(registry._REGISTRY, "nan-std-test", _NanStd)
    with pytest.raises(ContractError, match="surrogate 'nan-std-test' failed in predict.*NaN"):
        check_surrogate("nan-std-test", random_state=0)


class _FitNone:
    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, X, y):
        self.n_ = X.shape[1]

    def predict(self, X, return_std=False):
        return (np.zeros(len(X)), np.ones(len(X))) if return_std else np.zeros(len(X))


class _NanWhenWide(_FitNone):
    """Keeps the contract on the up-front check's synthetic features, not on the search's wider ones."""

    def fit(self, X, y):
        super().fit(X, y)
        return self

    def predict(self, X, return_std=False):
        mean, std = super().predict(X, return_std=True)
        std = std * np.nan if X.shape[1] > 11 else std
        return (mean, std) if return_std else mean


def test_the_search_checks_its_surrogate_again_on_the_real_features(monkeypatch):
    X, y = _data(n=20, d=19)  # a 4-layer model's features
    monkeypatch.setitem(registry._REGISTRY, "fit-none-test", _FitNone)
    monkeypatch.setitem(registry._REGISTRY, "nan-wide-test", _NanWhenWide)
    with pytest.raises(EvopruneError, match="'fit-none-test' breaks the surrogate contract: fit\\(X, y\\) did not"):
        CheckedSurrogate.fit("fit-none-test", 0, X, y)
    check_surrogate("nan-wide-test", random_state=0)  # fine on 11 features
    model = CheckedSurrogate.fit("nan-wide-test", 0, X, y)
    assert model.predict(X[:4]).shape == (4,)
    with pytest.raises(EvopruneError, match="returned a std with NaN values \\(4 of 4\\).*evoprune resume"):
        model.predict(X[:4], return_std=True)
