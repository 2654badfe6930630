"""Surrogate plugins through entry points, and ``evoprune surrogate report`` on a real store.

One tiny search, run through the CLI with a surrogate that only an entry point in
``tests/plugin_pkg`` provides, produces the store every report test reads.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.model_selection import KFold

from evoprune.engine.features import FeatureMap, LevelsAndFraction
from evoprune.errors import EvopruneError
from evoprune.reporting.prediction_metrics import gaussian_nll, interval_coverage, kendall_tau, within_cost_tau
from evoprune.reporting.surrogate_report import cached_feature_map, learning_curve, run_pairs, surrogate_report
from evoprune.space import SearchSpace
from evoprune.store import Store
from surrogates import make_surrogate

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_pkg"
PLUGIN = "bayesridge-demo"
SEARCH_ARGS = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4"]


def evoprune(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evoprune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
    )


def plugin_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def searched_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """A finished 16-evaluation search on the tiny model, driven by the plugin surrogate."""
    store = tmp_path_factory.mktemp("report") / "s.db"
    # A module-scoped fixture runs before conftest's per-test cache isolation: point the search
    # at the same per-session cache explicitly, so the report tests find its importance scores.
    env = {
        **plugin_env(),
        "EVOPRUNE_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "evoprune-cache"),
        "HF_HUB_OFFLINE": "1",
    }
    result = evoprune(
        "search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
        "--evals", "16", "--init", "8", "--batch", "4", "--surrogate", PLUGIN, *SEARCH_ARGS,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return store


# -- plugins -------------------------------------------------------------------------------------
def test_an_entry_point_plugin_drives_a_search(searched_store):
    with Store(searched_store) as st:
        run = st.get_run()
        evaluations = st.evaluations(run.id)
    assert run.settings["surrogate"] == PLUGIN
    acquired = [e for e in evaluations if e.origin == "acquired"]
    assert len(evaluations) == 16 and len(acquired) == 8
    # The plugin's predictions are what the search recorded before evaluating each candidate.
    assert all(e.predicted["std"] > 0 and np.isfinite(e.predicted["ppl"]) for e in acquired)


def test_an_unregistered_plugin_name_is_a_usage_error(tmp_path, tiny_model_dir, text_file):
    """Without the plugin on the path the same command fails cleanly and names the choices."""
    store = tmp_path / "s.db"
    result = evoprune("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
                      "--evals", "4", "--surrogate", PLUGIN, *SEARCH_ARGS)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and PLUGIN in result.stderr and "ngboost" in result.stderr
    assert not store.exists()


def test_the_conformance_suite_checks_a_plugin_without_changes():
    """Installing a plugin is enough for tests/test_surrogate_conformance.py to check it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "bayesridge",
         str(Path(__file__).resolve().parent / "test_surrogate_conformance.py")],
        capture_output=True, text=True, timeout=600, env=plugin_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 7, result.stdout[-3000:]


CONTRACT_PLUGINS = """
import numpy as np
from sklearn.linear_model import BayesianRidge


class Good:
    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, X, y):
        self.model_ = BayesianRidge().fit(X, y)
        return self

    def predict(self, X, return_std=False):
        return self.model_.predict(X, return_std=return_std)


class FitNone(Good):
    def fit(self, X, y):
        super().fit(X, y)


class NoRandomState(Good):
    def __init__(self):
        pass


class MeanOnly(Good):
    def predict(self, X, return_std=False):
        return self.model_.predict(X)


class WrongRows(Good):
    def predict(self, X, return_std=False):
        mean, std = self.model_.predict(X, return_std=True)
        return (mean[:1], std[:1]) if return_std else mean[:1]


class NanStd(Good):
    def predict(self, X, return_std=False):
        mean, std = self.model_.predict(X, return_std=True)
        return (mean, std * np.nan) if return_std else mean
"""


def write_plugin(root: Path, package: str, entry_points: dict[str, str], source: str = "") -> Path:
    """A plugin package as ``pip install`` would leave it: the module and its dist-info."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(source)
    dist = root / f"{package}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {package}:{target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text("[evoprune.surrogates]\n" + lines)
    return root


def search_with(surrogate: str, store: Path, model: Path, data: Path, paths: list[Path], *extra: str):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return evoprune("search", "--model", str(model), "--data", str(data), "--store", str(store), "--evals", "12",
                    "--surrogate", surrogate, *SEARCH_ARGS, *extra, env=env)  # fmt: skip


@pytest.mark.parametrize(
    ("surrogate", "broken"),
    [
        ("fit-none", "fit(X, y) returned None instead of the model itself: end fit with `return self`"),
        ("no-random-state", "its constructor does not take random_state"),
        ("mean-only", "predict(X, return_std=True) returned one array of shape (5,) instead of a (mean, std) pair"),
        ("wrong-rows", "predict(X, return_std=True) returned a mean of shape (1,) for 5 rows of X"),
        ("nan-std", "predict(X, return_std=True) returned a std with NaN values (5 of 5): return finite values"),
    ],
)
def test_a_plugin_that_breaks_the_contract_is_refused_before_any_evaluation(
    tmp_path, tiny_model_dir, text_file, surrogate, broken
):
    """A plugin is test-fitted on synthetic features, built as the search builds it (random_state
    included), before the model loads: it used to crash with a traceback after the initial design
    had been evaluated."""
    targets = {"fit-none": "FitNone", "no-random-state": "NoRandomState", "mean-only": "MeanOnly",
               "wrong-rows": "WrongRows", "nan-std": "NanStd"}  # fmt: skip
    plugins = write_plugin(tmp_path / "plugins", "contract_demo", targets, CONTRACT_PLUGINS)
    store = tmp_path / "s.db"
    result = search_with(surrogate, store, tiny_model_dir, text_file, [plugins])
    assert result.returncode == 2, result.stderr
    plugin = f"surrogate plugin '{surrogate}' (contract_demo:{targets[surrogate]})"
    expected = f"error: {plugin} breaks the surrogate contract: "
    assert result.stderr.startswith(expected) and broken in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not store.exists()


def test_a_plugin_that_fails_to_load_is_named_and_spares_the_other_surrogates(tmp_path, tiny_model_dir, text_file):
    plugins = write_plugin(tmp_path / "plugins", "half_done", {"broken": "does_not_exist"})
    store = tmp_path / "s.db"
    asked = search_with("broken", store, tiny_model_dir, text_file, [plugins])
    assert asked.returncode == 2 and not store.exists()
    assert asked.stderr.strip() == (
        "error: surrogate plugin 'broken' failed to load from half_done:does_not_exist (AttributeError: module "
        "'half_done' has no attribute 'does_not_exist'): fix or uninstall it"
    )
    # Another surrogate: one note on the broken plugin at most, no Python warning with a source line.
    # (--acquisition nope stops the search right after the surrogate was checked.)
    other = search_with(PLUGIN, store, tiny_model_dir, text_file, [plugins, PLUGIN_DIR], "--acquisition", "nope")
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and lines[-1].startswith("error: acquisition 'nope' is unknown"), other.stderr
    assert len(lines) <= 2 and "Warning" not in other.stderr, other.stderr
    assert all(line.startswith("note: surrogate plugin 'broken' failed to load") for line in lines[:-1])


def test_json_output_has_no_nan_where_a_stored_prediction_is_nan(searched_store, tmp_path):
    """Stores written before NaN predictions were refused hold some: --json writes them as null."""
    store = tmp_path / "nan.db"
    store.write_bytes(searched_store.read_bytes())
    with sqlite3.connect(store) as db:
        db.execute("""UPDATE evaluations SET predicted = '{"ppl": NaN, "std": NaN}' WHERE predicted IS NOT NULL""")
    for args in (["plan", "--max-params", "0.9"], ["pareto"]):
        out = evoprune(*args, "--store", str(store), "--json")
        assert out.returncode == 0, out.stderr
        json.loads(out.stdout, parse_constant=lambda word, cmd=args[0]: pytest.fail(f"{cmd} --json wrote {word}"))


# -- metrics -------------------------------------------------------------------------------------
def test_within_cost_tau_ranks_inside_bins_only():
    """Predictions that get the size effect right but every equal-size ranking backwards score
    well over all pairs (48 concordant, 18 discordant pairs) and -1 within cost bins."""
    cost = np.repeat([0.62, 0.77, 0.91], 4)
    actual = np.array([9.0, 9.5, 10.0, 10.5, 5.0, 5.5, 6.0, 6.5, 1.0, 1.5, 2.0, 2.5])
    backwards = np.array([10.5, 10.0, 9.5, 9.0, 6.5, 6.0, 5.5, 5.0, 2.5, 2.0, 1.5, 1.0])
    assert kendall_tau(actual, backwards) == pytest.approx((48 - 18) / 66)
    assert within_cost_tau(actual, backwards, cost) == (-1.0, 3)
    assert within_cost_tau(actual, actual, cost) == (1.0, 3)


def test_within_cost_tau_weights_bins_by_pairs_and_skips_small_ones():
    cost = np.array([0.60, 0.61, 0.62, 0.81, 0.82, 0.83, 0.84, 0.95, 0.96])
    actual = np.array([1, 2, 3, 1, 2, 3, 4, 1, 2], dtype=float)
    predicted = np.array([1, 2, 3, 4, 3, 2, 1, 2, 1], dtype=float)  # +1 in one bin, -1 in the other
    tau, bins = within_cost_tau(actual, predicted, cost)
    assert bins == 2  # the 95% bin has 2 pairs: too few
    assert tau == pytest.approx((3 * 1 + 4 * -1) / 7)
    assert within_cost_tau(actual[:2], predicted[:2], cost[:2]) == (pytest.approx(np.nan, nan_ok=True), 0)


def test_constant_predictions_rank_nothing():
    assert kendall_tau([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0


def test_nll_and_coverage_agree_with_the_normal_distribution():
    rng = np.random.default_rng(0)
    actual, mean, std = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.5, 2, size=50)
    assert gaussian_nll(actual, mean, std) == pytest.approx(-np.mean(stats.norm.logpdf(actual, mean, std)))
    lo, hi = stats.norm.interval(0.9, mean, std)
    assert interval_coverage(actual, mean, std) == pytest.approx(np.mean((actual >= lo) & (actual <= hi)))


# -- the report on a real store ------------------------------------------------------------------
def test_report_json_scores_every_surrogate_and_the_searchs_own_predictions(searched_store):
    out = evoprune("surrogate", "report", "--store", str(searched_store), "--json", "--folds", "4",
                   "--surrogates", f"gbdt,forest,{PLUGIN}", env=plugin_env())  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["n_pairs"] == 16 and report["folds"] == 4 and report["run"] == 1
    assert report["features"].startswith("engine FeatureMap")
    assert [s["name"] for s in report["scores"]] == ["gbdt", "forest", PLUGIN]
    for s in report["scores"]:
        assert s["error"] is None and s["n"] == 16
        assert -1 <= s["kendall_tau"] <= 1 and -1 <= s["spearman_rho"] <= 1
        assert s["rmse"] > 0 and 0 <= s["coverage90"] <= 1 and s["fit_s"] > 0

    # The recorded figures are those of the stored predictions against the stored perplexities.
    with Store(searched_store) as st:
        acquired = [e for e in st.evaluations(st.get_run().id, "ok") if e.predicted]
    actual = np.log([e.metrics["ppl"] for e in acquired])
    mean = np.array([e.predicted["ppl"] for e in acquired])  # the search predicts log perplexity
    std = np.array([e.predicted["std"] for e in acquired])
    rec = report["recorded"]
    assert report["recorded_surrogate"] == PLUGIN and rec["n"] == len(acquired) == 8
    assert rec["kendall_tau"] == pytest.approx(stats.kendalltau(actual, mean).statistic)
    assert rec["rmse"] == pytest.approx(np.sqrt(np.mean((actual - mean) ** 2)))
    assert rec["nll"] == pytest.approx(-np.mean(stats.norm.logpdf(actual, mean, std)))


def test_report_features_are_the_searchs_own(searched_store, tiny_model_dir, text_file):
    """The cached importance the report finds gives exactly the features the search computed."""
    import evoprune

    with Store(searched_store) as st:
        run = st.get_run()
        pairs = run_pairs(st, run)
    known = {f.name for f in fields(evoprune.BackendSettings)}
    backend_settings = evoprune.BackendSettings(**{k: v for k, v in run.settings["backend"].items() if k in known})
    settings = evoprune.SearchSettings(evals=1, backend=backend_settings)
    backend = evoprune.prepare_backend(str(tiny_model_dir), str(text_file), settings)
    assert backend.data_fingerprint == run.data_fingerprint
    expected = FeatureMap(backend.space, backend.score())(pairs.levels)
    np.testing.assert_array_equal(cached_feature_map(run)(pairs.levels), expected)


def test_report_table_without_cached_importance_falls_back_to_stored_features(searched_store, tmp_path):
    # A wide terminal, so that rich does not wrap the row labels the test reads.
    env = {**os.environ, "EVOPRUNE_CACHE_DIR": str(tmp_path / "empty-cache"), "COLUMNS": "200"}
    out = evoprune("surrogate", "report", "--store", str(searched_store), "--folds", "3", "--surrogates", "gbdt",
                   env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "levels + kept parameter fraction" in out.stdout
    words = " ".join(out.stdout.split())  # the caption wraps at the table's width
    assert "gbdt" in out.stdout and f"in search: {PLUGIN}" in out.stdout and "its 8 acquired candidates" in words


def test_report_api_is_reproducible_and_matches_a_manual_cross_validation(searched_store):
    with Store(searched_store) as st:
        run = st.get_run()
        a = surrogate_report(st, run, ["forest"], folds=4, seed=1)
        b = surrogate_report(st, run.id, ["forest"], folds=4, seed=1)
        pairs = run_pairs(st, run)
    assert a.features == "levels + kept parameter fraction"
    same = [{k: v for k, v in vars(s).items() if k != "fit_s"} for s in (a.scores[0], b.scores[0])]
    assert same[0] == same[1]
    X = LevelsAndFraction(SearchSpace.from_dict(run.space))(pairs.levels)
    mean = np.empty(len(X))
    for train, test in KFold(4, shuffle=True, random_state=1).split(X):
        mean[test] = make_surrogate("forest", random_state=1).fit(X[train], pairs.target[train]).predict(X[test])
    assert a.scores[0].kendall_tau == pytest.approx(stats.kendalltau(pairs.target, mean).statistic)
    assert a.scores[0].rmse == pytest.approx(np.sqrt(np.mean((pairs.target - mean) ** 2)))


def test_learning_curve_scores_every_size_on_the_same_held_out_pairs():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, size=(60, 6)).astype(float)
    y = X @ rng.uniform(0.5, 1.5, size=6)
    cost = 1 - X.sum(axis=1) / 36
    rows = learning_curve(X, y, cost, ["forest"], sizes=[10, 40], holdout=20, repeats=2, seed=3)
    assert [(r["name"], r["train"], r["holdout"]) for r in rows] == [("forest", 10, 20), ("forest", 40, 20)]
    # Recompute one point by hand: each repeat holds out the first 20 of one permutation.
    splits = np.random.default_rng(3)
    orders = [splits.permutation(60) for _ in range(2)]
    taus = []
    for r, order in enumerate(orders):
        test, train = order[:20], order[20:30]
        pred = make_surrogate("forest", random_state=3 + r).fit(X[train], y[train]).predict(X[test])
        taus.append(stats.kendalltau(y[test], pred).statistic)
    assert rows[0]["kendall_tau"] == pytest.approx(np.mean(taus))
    with pytest.raises(EvopruneError, match="collect more pairs"):
        learning_curve(X, y, cost, ["forest"], sizes=[50], holdout=20)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--surrogates", "nope"], "surrogate 'nope' is unknown"),
        (["--run", "99"], "has no run 99"),
        (["--folds", "40"], "too few for 40-fold"),
    ],
)
def test_report_bad_input_is_one_line_exit_2(searched_store, args, needle):
    out = evoprune("surrogate", "report", "--store", str(searched_store), *args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr


def test_report_on_a_missing_store(tmp_path):
    out = evoprune("surrogate", "report", "--store", str(tmp_path / "none.db"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_the_benchmark_script_runs_on_a_tiny_model_and_keeps_other_sections(tmp_path, tiny_model_dir, text_file):
    """benchmarks/surrogates.py at toy size, so it cannot rot; it rewrites only its own section."""
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Surrogates\n\nold figures\n\n## Other\n\nkept as is\n")
    env = {**os.environ, "EVOPRUNE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "surrogates.py"),
         "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(tmp_path / "b.db"),
         "--pairs", "24", "--eval-tokens", "256", "--seq-len", "64", "--sizes", "8,12", "--holdout", "8",
         "--repeats", "1",
         "--surrogates", "additive,forest", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "old figures" not in text and text.count("## Surrogates") == 1
    assert text.index("## Surrogates") < text.index("## Other") and "kept as is" in text
    assert "24 real pairs" in text and "| additive |" in text and "| forest |" in text
    with Store(tmp_path / "b.db") as st:
        assert len(st.evaluations(st.get_run().id, "ok")) == 24


def test_the_report_says_which_surrogate_it_is_cross_validating(searched_store):
    # Newcomer report: `surrogate report` ran 48 s with nothing on stderr.
    heard = []
    with Store(searched_store) as st:
        surrogate_report(st, None, ["forest", "additive"], folds=2, progress=lambda e, **i: heard.append((e, i)))
    assert heard == [("phase", {"name": "cross-validating forest (1 of 2, 2 folds)"}),
                     ("phase", {"name": "cross-validating additive (2 of 2, 2 folds)"})]  # fmt: skip
