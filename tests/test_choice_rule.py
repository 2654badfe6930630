"""Which configuration a choice under a budget returns when some climbed the fidelity ladder
(``objectives.pareto.contenders``, ``best_of``): the finalists on their top rung, not a luckier
first-rung figure the ladder passed over, unless that one is clearly better."""

from __future__ import annotations

import math

from evoprune.objectives.pareto import best_of, contenders
from evoprune.store import Evaluation

SE = 0.12  # a 2,048-token first rung's standard error of the mean NLL on SmolLM2-135M


def _evaluation(id_: int, first: float, rung: float | None = None) -> Evaluation:
    """An ok configuration at 80% kept: first-rung perplexity ``first``; ``rung`` on 8,192 tokens."""
    ladder = {8192: {"ppl": rung, "nll": math.log(rung), "nll_se": SE / 2}} if rung is not None else {}
    metrics = {"ppl": first, "nll": math.log(first), "nll_se": SE}
    return Evaluation(id_, 1, f"k{id_}", [0], "ok", "local", 1, 80, 0.8, metrics, {}, None, None, "t", "t", 1.0,
                      ladder=ladder)  # fmt: skip


def test_a_configuration_the_ladder_passed_over_does_not_beat_the_finalists_on_its_first_rung():
    # As a 150-evaluation search at 80% of SmolLM2-135M measured them: finalists promoted early (first
    # rung about 32) and late (about 30.9, luckier) are alike on 8,192 tokens; the mean offset
    # between the rungs (-0.088) put every finalist above 31.3, and the 9th best on the first rung,
    # never promoted, was picked on 2,048 tokens.
    early = [_evaluation(i, 31.97 + 0.04 * i, 28.9 + 0.01 * i) for i in range(1, 5)]
    late = [_evaluation(10 + i, 30.79 + 0.04 * i, 28.67 + 0.03 * i) for i in range(4)]
    passed_over = _evaluation(99, 30.98)
    evals = [*early, *late, passed_over]
    assert {e.id for e in contenders(evals, "ppl")} == {e.id for e in early + late}
    assert best_of(evals, "ppl").id == 10  # the best on 8,192 tokens
    # One clearly better on the first rung (beyond two standard errors of the difference) was never
    # weighed against them: it competes, and wins on a figure that far ahead.
    ahead = _evaluation(100, 30.79 * math.exp(-2.5 * math.hypot(SE, SE)))
    assert ahead in contenders([*evals, ahead], "ppl") and best_of([*evals, ahead], "ppl").id == 100
    # With no ladder at all, every configuration competes on its first rung.
    flat = [_evaluation(i, 30 + i) for i in range(3)]
    assert contenders(flat, "ppl") == flat and best_of(flat, "ppl").id == 0
