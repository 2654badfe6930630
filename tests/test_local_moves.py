"""Level-swap moves around the incumbents: the neighbourhood, the choice, and a search that uses them."""

from __future__ import annotations

import numpy as np
import pytest

from evoprune.backend.synthetic import SyntheticBackend
from evoprune.engine.local_moves import best_neighbours, level_swaps
from evoprune.engine.run import search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError


def test_level_swaps_are_every_one_step_and_swap_move_within_bounds():
    lower, upper = np.zeros(4, dtype=int), np.array([2, 2, 2, 2])
    x = np.array([0, 1, 2, 1])
    moves = level_swaps(x, lower, upper)
    up, down = [0, 1, 3], [1, 2, 3]  # variables that can go one level up / down
    swaps = sum(i != j for i in up for j in down)
    assert len(moves) == swaps + len(up) + len(down)
    assert len({m.tobytes() for m in moves}) == len(moves)
    assert np.all(moves >= lower) and np.all(moves <= upper)
    distance = np.abs(moves - x).sum(axis=1)
    assert sorted(set(distance)) == [1, 2]
    # a swap keeps the sum of levels; a step changes it by one
    assert np.all(moves[:swaps].sum(axis=1) == x.sum())
    assert len(level_swaps(np.zeros(3, dtype=int), np.zeros(3, dtype=int), np.zeros(3, dtype=int))) == 0


def test_best_neighbours_take_the_best_predicted_admissible_move_of_each_incumbent_in_turn():
    lower, upper = np.zeros(3, dtype=int), np.full(3, 3)
    weights = np.array([1.0, 2.0, 4.0])

    def predict(Z):
        return Z @ weights

    def admissible(Z):
        return Z.sum(axis=1) == 3  # a "budget": the same total pruning as the incumbents

    incumbents = np.array([[1, 1, 1], [2, 1, 0]])
    chosen = best_neighbours(incumbents, lower, upper, admissible, predict, 3)
    assert chosen.tolist() == [[2, 1, 0], [3, 0, 0], [1, 2, 0]]  # first of each incumbent, then the next
    # the first incumbent's best move is the second incumbent itself: not admissible once known
    known = {tuple(x) for x in incumbents}

    def unknown(Z):
        return admissible(Z) & np.array([tuple(z) not in known for z in Z])

    chosen = best_neighbours(incumbents, lower, upper, unknown, predict, 2)
    assert chosen.tolist() == [[1, 2, 0], [3, 0, 0]]
    assert best_neighbours(incumbents, lower, upper, lambda Z: np.zeros(len(Z), bool), predict, 2).shape == (0, 3)


def _synthetic_search(tmp_path, share: float, name: str):
    backend = SyntheticBackend.create(seed=0)
    settings = SearchSettings(
        evals=24, seed=0, max_params=0.7, batch=4, pop_size=24, generations=8, local_share=share,
        backend=backend.settings,
    )  # fmt: skip
    return search("synthetic", "synthetic", str(tmp_path / name), settings, backend=backend)


def test_a_budgeted_search_spends_its_local_share_on_swaps_around_the_best_inside_the_band(tmp_path):
    result = _synthetic_search(tmp_path, 0.5, "a.db")
    local = [e for e in result.evaluations if e.origin == "local"]
    acquired = [e for e in result.evaluations if e.origin == "acquired"]
    assert len(local) == len(acquired) > 0  # half of each batch of 4
    for e in local:
        earlier = [o for o in result.evaluations if o.id < e.id]
        distance = min(np.abs(np.array(e.levels) - np.array(o.levels)).sum() for o in earlier)
        assert distance in (1, 2)
        assert 0.7 * 0.95 <= e.params_fraction <= 0.7  # inside the focus band
        assert "std" in e.predicted
    again = _synthetic_search(tmp_path, 0.5, "b.db")
    assert [e.config_key for e in again.evaluations] == [e.config_key for e in result.evaluations]
    off = _synthetic_search(tmp_path, 0.0, "c.db")
    assert not any(e.origin == "local" for e in off.evaluations)


def test_a_share_outside_zero_to_one_is_refused():
    with pytest.raises(EvopruneError, match="--local-share must be in"):
        SearchSettings(evals=4, local_share=1.5).validate()
