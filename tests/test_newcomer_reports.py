"""A newcomer's reports: each test fails on the code before its fix."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from evoprune.engine.active_learning import ActiveLearning


def _roi(primary: str, best_metrics: dict, predicted: list[float], k: int = 1) -> list[float]:
    """The predicted means that the region-of-interest filter keeps."""
    ctx = SimpleNamespace(
        objectives=SimpleNamespace(quality=(primary,)),
        settings=SimpleNamespace(max_ppl_ratio=20.0),
        shared_evaluations=lambda: [SimpleNamespace(status="ok", metrics=best_metrics)],
    )
    mean = np.array(predicted)
    pool = np.arange(len(mean))[:, None]
    _, kept, _ = ActiveLearning()._region_of_interest(ctx, pool, mean, np.zeros(len(mean)), k)
    return list(kept)


def test_max_ppl_ratio_does_not_confine_a_kl_search_to_near_dense_configurations():
    # The dense model's KL is 0: a ratio of it kept only candidates within 20 x 1e-8 nats.
    predicted = [math.log(1e-7), math.log(0.05), math.log(0.5), math.log(2.0), math.log(10.0)]
    kept = _roi("kl", {"kl": 0.0}, predicted)
    assert kept == predicted[:4]  # up to log(20) = 3.0 nats/token more than the best; 10 nats is collapsed


def test_max_ppl_ratio_still_bounds_perplexity_by_a_factor_and_leaves_accuracy_alone():
    assert _roi("ppl", {"ppl": 10.0}, [math.log(50.0), math.log(150.0), math.log(250.0)]) == [
        math.log(50.0),
        math.log(150.0),
    ]
    assert _roi("acc:arc_easy", {"acc:arc_easy": 0.6}, [-0.6, -0.1, 0.0]) == [-0.6, -0.1, 0.0]
