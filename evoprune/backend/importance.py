"""Importance of every attention head and MLP channel, by a named criterion, cached on disk.

Criteria (chosen by name, see ``CRITERIA``); every score is raw (no normalisation across layers or
modules) and higher means more important:

- ``magnitude``: L1 norm of the weights that belong to the unit.
- ``wanda``: activation-weighted magnitude, sum of ``|W| * ||X||`` over the unit's weights, with
  ``||X||`` the L2 norm of each input feature over the calibration tokens (Sun et al. 2023).
- ``wanda-sp``: the structured Wanda baseline of FLAP (An et al. 2024, github.com/CASIA-IVA-Lab/FLAP,
  ``lib/prune.py:prune_wanda_sp``): for MLP channel ``j``, ``||X_j||_2 * sum_i |W_down[i, j]|`` with
  ``X_j`` the down projection's input feature ``j`` over the calibration tokens; for a head, the same
  over the ``o`` projection's input features of the head, summed. FLAP averages ``|W|`` over the
  rows and scales ``||X||`` by ``1/sqrt(samples)``: both are factors common to every unit (down and
  ``o`` have the same number of rows), so the ranking is the same.
- ``flap``: FLAP's fluctuation metric WIFV: ``Var(X_j) * ||W_down[:, j]||_2^2`` with ``Var`` the
  (population) variance of input feature ``j`` over the calibration tokens; heads sum it over their
  ``o`` input features. FLAP additionally squares the per-feature ``o`` scores and standardises each
  module's scores before its global ranking; that belongs to the FLAP baseline, not to this score.
- ``obs``: greedy structured Optimal Brain Surgeon (ZipLM, SlimGPT; ``greedy_obs.py``): per
  layer, the order in which removing units from the ``down`` (channels) and ``o`` (heads)
  projections, each followed by the least-squares update of the rest, raises the output's error
  least; a unit's score is the error its removal adds then (raised so the scores increase in that
  order, so they rank as greedy OBS removes and sum over a group). The selection that matches
  ``refit`` compensation. It reads the inputs' covariance (``NEEDS_COVARIANCE``).
- ``taylor``: first-order Taylor of LLM-Pruner (Ma et al. 2023), the element-wise ``|W * dL/dW|``
  summed over each coupled group, with the gradient of the language-modelling loss accumulated over
  the calibration windows. An MLP channel's group is its rows of ``gate`` and ``up`` and its column
  of ``down``. A query head's group is its rows of ``q`` and its columns of ``o``, plus an equal share
  (``1 / queries_per_group``) of its KV head's ``k`` and ``v`` rows: a KV group's score (the sum of
  its query heads, see ``plan.py``) is then exactly LLM-Pruner's score of the whole group, while the
  ranking of query heads inside a group, which keeps ``k`` and ``v``, is unaffected.

For ``magnitude`` and ``wanda``, a query head's weights are its rows of ``q`` and columns of ``o``,
and an MLP channel's its rows of ``gate`` and ``up`` and its column of ``down``.

The same calibration pass records the mean input of every ``o`` and ``down`` projection feature,
which compensation (``compensation.py``) needs; they are cached with the scores. The least-squares
re-fit also needs the covariance of those inputs, ``num_layers * (intermediate_size^2 +
(num_heads * head_dim)^2)`` float32 values (323 MB for SmolLM2-135M), recorded only when asked
for and cached apart from the scores: it does not depend on the criterion. It is summed for as many
layers at a time as memory holds (``activation_stats.py``) and written into its cache entry a layer
at a time (``importance_cache.written_entry``); a cached one is memory-mapped (read-only
``np.memmap``), not read into memory. Each cache entry is computed under a
file lock, so processes started together score a model once (``importance_cache.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from evoprune.backend.activation_stats import COVARIANCE_NAMES, NO_COVARIANCES, ActivationStats
from evoprune.backend.adapters import LayerParts
from evoprune.backend.greedy_obs import greedy_obs_scores
from evoprune.backend.importance_cache import (
    covariance_cache_file,
    importance_cache_file,
    load_entry,
    locked,
    map_entry,
    save_entry,
    written_entry,
)
from evoprune.errors import EvopruneError


@dataclass(frozen=True)
class Importance:
    attn: np.ndarray  # (num_layers, num_heads): score per query head
    mlp: np.ndarray  # (num_layers, intermediate_size): score per channel
    # Mean over the calibration tokens of each input feature of o and down (float64), or None when
    # not computed: (num_layers, num_heads * head_dim) and (num_layers, intermediate_size).
    o_mean: np.ndarray | None = None
    down_mean: np.ndarray | None = None
    # Population covariance of the same inputs (float32; a read-only np.memmap of the cache entry
    # when there is one), or None when not computed:
    # (num_layers, num_heads * head_dim, num_heads * head_dim) and (num_layers, intermediate_size, intermediate_size).
    o_cov: np.ndarray | None = None
    down_cov: np.ndarray | None = None


def _head_sum(per_feature: torch.Tensor, head_dim: int) -> torch.Tensor:
    return per_feature.reshape(-1, head_dim).sum(dim=1)


def _unit_scores(parts: LayerParts, head_dim: int, q_w, o_w, gate_w, up_w, down_w) -> tuple:
    """Sum per-weight scores into per-head and per-channel scores."""
    head = _head_sum(q_w.sum(dim=1), head_dim) + _head_sum(o_w.sum(dim=0), head_dim)
    channel = up_w.sum(dim=1) + down_w.sum(dim=0)
    if gate_w is not None:
        channel = channel + gate_w.sum(dim=1)
    return head, channel


def _w(module) -> torch.Tensor:
    return module.weight.detach().double()


def _magnitude(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    heads, channels = [], []
    for p in layers:
        gate = p.gate.weight.abs() if p.gate is not None else None
        h, c = _unit_scores(
            p, head_dim, p.q.weight.abs(), p.o.weight.abs(), gate, p.up.weight.abs(), p.down.weight.abs()
        )
        heads.append(h)
        channels.append(c)
    return _stack(heads, channels)


def _wanda(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    stats.collect(model, windows)
    heads, channels = [], []
    for i, p in enumerate(layers):
        # float32 norms, as this criterion has always used, so its scores keep their precision.
        x_attn, x_o, x_mlp, x_down = (stats.norm(i, k).float().to(p.q.weight.device) for k in stats.KEYS)
        gate = p.gate.weight.abs() * x_mlp if p.gate is not None else None
        h, c = _unit_scores(
            p,
            head_dim,
            p.q.weight.abs() * x_attn,
            p.o.weight.abs() * x_o,
            gate,
            p.up.weight.abs() * x_mlp,
            p.down.weight.abs() * x_down,
        )
        heads.append(h)
        channels.append(c)
    return _stack(heads, channels)


def _wanda_sp(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    stats.collect(model, windows)
    heads, channels = [], []
    for i, p in enumerate(layers):
        o_norm, down_norm = stats.norm(i, "o_in"), stats.norm(i, "down_in")
        heads.append(_head_sum(_w(p.o).abs().sum(dim=0).cpu() * o_norm.cpu(), head_dim))
        channels.append(_w(p.down).abs().sum(dim=0).cpu() * down_norm.cpu())
    return _stack(heads, channels)


def _flap(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    stats.collect(model, windows)
    heads, channels = [], []
    for i, p in enumerate(layers):
        o_var, down_var = stats.variance(i, "o_in"), stats.variance(i, "down_in")
        heads.append(_head_sum(_w(p.o).pow(2).sum(dim=0).cpu() * o_var.cpu(), head_dim))
        channels.append(_w(p.down).pow(2).sum(dim=0).cpu() * down_var.cpu())
    return _stack(heads, channels)


def _obs(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    stats.collect(model, windows)
    heads, channels = [], []
    for i, p in enumerate(layers):
        heads.append(torch.from_numpy(greedy_obs_scores(p.o.weight, stats.covariance_matrix(i, "o_in"), head_dim)))
        channels.append(torch.from_numpy(greedy_obs_scores(p.down.weight, stats.covariance_matrix(i, "down_in"))))
    return _stack(heads, channels)


def _taylor(model, layers: list[LayerParts], windows, head_dim: int, stats: ActivationStats) -> Importance:
    modules = [m for p in layers for m in (p.q, p.k, p.v, p.o, p.gate, p.up, p.down) if m is not None]
    previous = {id(m): m.weight.requires_grad for m in modules}
    # Only the pruned projections need gradients; freezing the rest saves memory and time.
    frozen = [(prm, prm.requires_grad) for prm in model.parameters()]
    for prm, _ in frozen:
        prm.requires_grad_(False)
    for m in modules:
        m.weight.requires_grad_(True)
        m.weight.grad = None
    # The same forward passes record the activation statistics (means for compensation).
    handles = [] if stats.collected else stats.attach(model.device)
    try:
        for row in windows:
            row = row[None].to(model.device)
            out = model(input_ids=row, labels=row)
            (out.loss / len(windows)).backward()
        heads, channels = [], []
        for p in layers:

            def score(m):
                return (m.weight.detach() * m.weight.grad).abs()

            gate = score(p.gate) if p.gate is not None else None
            h, c = _unit_scores(p, head_dim, score(p.q), score(p.o), gate, score(p.up), score(p.down))
            kv = _head_sum(score(p.k).sum(dim=1) + score(p.v).sum(dim=1), head_dim)  # (num_kv_heads,)
            per_group = len(h) // len(kv)
            heads.append(h + (kv / per_group).repeat_interleave(per_group))
            channels.append(c)
        return _stack(heads, channels)
    finally:
        for handle in handles:
            handle.remove()
        for prm, flag in frozen:
            prm.requires_grad_(flag)
        for m in modules:
            m.weight.grad = None
            m.weight.requires_grad_(previous[id(m)])


def _stack(heads, channels) -> Importance:
    return Importance(
        attn=torch.stack(heads).detach().double().cpu().numpy(),
        mlp=torch.stack(channels).detach().double().cpu().numpy(),
    )


CRITERIA: dict[str, Callable] = {
    "magnitude": _magnitude,
    "wanda": _wanda,
    "wanda-sp": _wanda_sp,
    "flap": _flap,
    "taylor": _taylor,
    "obs": _obs,
}
# Criteria that read the covariance of the o and down inputs (collected with the statistics).
NEEDS_COVARIANCE = frozenset({"obs"})
# Bumped when a criterion's definition changes, so stale cached scores are not reused.
_VERSIONS = {"taylor": 2, "obs": 2}  # obs 2: a unit's own added error, not the cumulative error


def importance_cache_key(model_fingerprint: str, data_fingerprint: str, criterion: str, n_tokens: int) -> str:
    payload = json.dumps([model_fingerprint, data_fingerprint, criterion, n_tokens, _VERSIONS.get(criterion, 1)])
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _with_means(scores: Importance, stats: ActivationStats, layers: list[LayerParts]) -> Importance:
    o_mean = torch.stack([stats.mean(i, "o_in").cpu() for i in range(len(layers))]).numpy()
    down_mean = torch.stack([stats.mean(i, "down_in").cpu() for i in range(len(layers))]).numpy()
    return replace(scores, o_mean=o_mean, down_mean=down_mean)


def compute_importance(
    model,
    layers: list[LayerParts],
    windows: torch.Tensor,
    head_dim: int,
    criterion: str = "wanda",
    cache_key: str | None = None,
    with_means: bool = False,
    with_covariance: bool = False,
    covariance_cache_key: str | None = None,
    about: str | None = None,
) -> tuple[Importance, bool]:
    """Score every head and channel; returns the scores and whether they came from the cache.

    ``windows``: calibration token ids, (n_windows, seq_len). ``with_means`` also records the mean
    input of every ``o`` and ``down`` feature (``Importance.o_mean``/``down_mean``), for bias
    compensation; a cached entry without them is recomputed. ``with_covariance`` (implies the
    means) also records their covariances (``o_cov``/``down_cov``), for the least-squares re-fit,
    cached under ``covariance_cache_key``. ``about``: what the entries hold, in words, recorded in
    their metadata for ``evoprune cache list``. Raises EvopruneError for an unknown criterion.
    """
    if criterion not in CRITERIA:
        raise EvopruneError(f"importance criterion {criterion!r} is unknown: use one of {', '.join(CRITERIA)}")
    with_means = with_means or with_covariance
    path = importance_cache_file(cache_key) if cache_key else None
    cov_path = covariance_cache_file(covariance_cache_key) if with_covariance and covariance_cache_key else None
    cached = _cached(path, cov_path, with_means, with_covariance)
    if cached is not None:
        return cached, True
    # Searches started together on one model would each spend minutes on the same scores: the
    # first computes them under the cache entries' locks, the others then read its files.
    with locked(path, cov_path):
        cached = _cached(path, cov_path, with_means, with_covariance)
        if cached is not None:
            return cached, True
        computed = _compute(
            model, layers, windows, head_dim, criterion, path, cov_path, with_means, with_covariance, about
        )
        return computed, False


_COVARIANCE_KEYS = tuple(COVARIANCE_NAMES.values())


def _covariance_shapes(layers: list[LayerParts]) -> dict[str, tuple[int, ...]]:
    """Shapes of the cached covariances: ``(num_layers, in, in)`` of the ``o`` and ``down`` inputs."""
    o, down = layers[0].o.in_features, layers[0].down.in_features
    return {"o_cov": (len(layers), o, o), "down_cov": (len(layers), down, down)}


def _score_keys(with_means: bool) -> tuple[str, ...]:
    return ("attn", "mlp", "o_mean", "down_mean") if with_means else ("attn", "mlp")


def _cached(path: Path | None, cov_path: Path | None, with_means: bool, with_covariance: bool) -> Importance | None:
    """The scores (and covariances) cached at ``path`` (``cov_path``), or None when any is missing;
    the covariances are not read when the scores are missing (``_compute`` reads them once)."""
    arrays = load_entry(path, _score_keys(with_means))
    if arrays is None:
        return None
    covs = map_entry(cov_path, _COVARIANCE_KEYS) if with_covariance else {}
    if covs is None:
        return None
    return Importance(
        attn=arrays["attn"],
        mlp=arrays["mlp"],
        o_mean=arrays.get("o_mean"),
        down_mean=arrays.get("down_mean"),
        o_cov=covs.get("o_cov"),
        down_cov=covs.get("down_cov"),
    )


def _compute(
    model,
    layers: list[LayerParts],
    windows: torch.Tensor,
    head_dim: int,
    criterion: str,
    path: Path | None,
    cov_path: Path | None,
    with_means: bool,
    with_covariance: bool,
    about: str | None = None,
) -> Importance:
    """Score (and record the inputs' statistics), reusing whatever part is cached; cache the rest."""
    arrays = load_entry(path, _score_keys(with_means))
    covs = map_entry(cov_path, _COVARIANCE_KEYS) if with_covariance else None
    new_covs = with_covariance and covs is None
    needs_covariance = new_covs or (arrays is None and criterion in NEEDS_COVARIANCE)
    with ExitStack() as stack:
        # New covariances go straight into their cache file, a layer at a time, never whole in memory.
        sink = None
        if new_covs and cov_path is not None:
            entry = written_entry(cov_path, _covariance_shapes(layers), about and f"calibration covariances of {about}",
                                  NO_COVARIANCES)  # fmt: skip
            sink = stack.enter_context(entry)
        stats = ActivationStats(layers, covariance=needs_covariance, copied=new_covs, sink=sink)
        was_training = model.training
        model.eval()
        try:
            if arrays is None:
                scores = CRITERIA[criterion](model, layers, windows, head_dim, stats)
            else:  # the scores are cached; only the covariances are missing
                scores = Importance(attn=arrays["attn"], mlp=arrays["mlp"])
            if with_means:
                stats.collect(model, windows)
                scores = _with_means(scores, stats, layers)
            if new_covs:
                covs = stats.write_covariances()
        finally:
            model.train(was_training)
    if arrays is None:
        saved = {"attn": scores.attn, "mlp": scores.mlp}
        if scores.o_mean is not None:
            saved.update(o_mean=scores.o_mean, down_mean=scores.down_mean)
        save_entry(path, saved, about and f"{criterion} scores of {about}")
    if new_covs and cov_path is not None:
        # From here on the file's pages, shared with the other processes that map it, read-only.
        covs = map_entry(cov_path, _COVARIANCE_KEYS) or covs
    return replace(scores, **covs) if with_covariance else scores
