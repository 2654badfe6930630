"""Importance of every attention head and MLP channel, by a named criterion, cached on disk.

Criteria (chosen by name, see ``CRITERIA``):

- ``magnitude``: L1 norm of the weights that belong to the unit.
- ``wanda``: activation-weighted magnitude, sum of ``|W| * ||X||`` over the unit's weights, with
  ``||X||`` the L2 norm of each input feature over the calibration tokens (Sun et al. 2023).
- ``taylor``: first-order Taylor, sum of ``|W * dL/dW|`` over the unit's weights (LLM-Pruner).

A unit's weights are: for a query head, its rows of ``q`` and columns of ``o``; for an MLP
channel, its rows of ``gate`` and ``up`` and its column of ``down``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from evoprune.backend.adapters import LayerParts
from evoprune.cache import cache_dir
from evoprune.errors import EvopruneError


@dataclass(frozen=True)
class Importance:
    attn: np.ndarray  # (num_layers, num_heads): score per query head
    mlp: np.ndarray  # (num_layers, intermediate_size): score per channel


def _head_sum(per_feature: torch.Tensor, head_dim: int) -> torch.Tensor:
    return per_feature.reshape(-1, head_dim).sum(dim=1)


def _unit_scores(parts: LayerParts, head_dim: int, q_w, o_w, gate_w, up_w, down_w) -> tuple:
    """Sum per-weight scores into per-head and per-channel scores."""
    head = _head_sum(q_w.sum(dim=1), head_dim) + _head_sum(o_w.sum(dim=0), head_dim)
    channel = up_w.sum(dim=1) + down_w.sum(dim=0)
    if gate_w is not None:
        channel = channel + gate_w.sum(dim=1)
    return head, channel


def _magnitude(model, layers: list[LayerParts], windows: torch.Tensor, head_dim: int) -> Importance:
    heads, channels = [], []
    for p in layers:
        gate = p.gate.weight.abs() if p.gate is not None else None
        h, c = _unit_scores(
            p, head_dim, p.q.weight.abs(), p.o.weight.abs(), gate, p.up.weight.abs(), p.down.weight.abs()
        )
        heads.append(h)
        channels.append(c)
    return _stack(heads, channels)


def _input_norms(model, layers: list[LayerParts], windows: torch.Tensor) -> dict:
    """Squared L2 norm of every input feature of q, o, gate/up and down over the windows."""
    sums: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(key):
        def fn(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[key] = sums.get(key, 0) + (x * x).sum(dim=0)

        return fn

    for i, p in enumerate(layers):
        handles += [
            p.q.register_forward_pre_hook(hook((i, "attn_in"))),
            p.o.register_forward_pre_hook(hook((i, "o_in"))),
            p.up.register_forward_pre_hook(hook((i, "mlp_in"))),
            p.down.register_forward_pre_hook(hook((i, "down_in"))),
        ]
    try:
        with torch.inference_mode():
            for row in windows:
                model(input_ids=row[None].to(model.device))
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def _wanda(model, layers: list[LayerParts], windows: torch.Tensor, head_dim: int) -> Importance:
    norms = _input_norms(model, layers, windows)
    heads, channels = [], []
    for i, p in enumerate(layers):
        x_attn, x_o, x_mlp, x_down = (norms[(i, k)] for k in ("attn_in", "o_in", "mlp_in", "down_in"))
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


def _taylor(model, layers: list[LayerParts], windows: torch.Tensor, head_dim: int) -> Importance:
    modules = [m for p in layers for m in (p.q, p.o, p.gate, p.up, p.down) if m is not None]
    previous = {id(m): m.weight.requires_grad for m in modules}
    # Only the pruned projections need gradients; freezing the rest saves memory and time.
    frozen = [(prm, prm.requires_grad) for prm in model.parameters()]
    for prm, _ in frozen:
        prm.requires_grad_(False)
    for m in modules:
        m.weight.requires_grad_(True)
        m.weight.grad = None
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
            heads.append(h)
            channels.append(c)
        return _stack(heads, channels)
    finally:
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


CRITERIA: dict[str, Callable] = {"magnitude": _magnitude, "wanda": _wanda, "taylor": _taylor}


def importance_cache_key(model_fingerprint: str, data_fingerprint: str, criterion: str, n_tokens: int) -> str:
    payload = json.dumps([model_fingerprint, data_fingerprint, criterion, n_tokens, 1])
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def compute_importance(
    model,
    layers: list[LayerParts],
    windows: torch.Tensor,
    head_dim: int,
    criterion: str = "wanda",
    cache_key: str | None = None,
) -> tuple[Importance, bool]:
    """Score every head and channel; returns the scores and whether they came from the cache."""
    if criterion not in CRITERIA:
        raise EvopruneError(f"importance criterion {criterion!r} is unknown: use one of {', '.join(CRITERIA)}")
    path = cache_dir("importance") / f"{cache_key}.safetensors" if cache_key else None
    if path is not None and path.exists():
        try:
            arrays = load_file(str(path))
            return Importance(attn=arrays["attn"], mlp=arrays["mlp"]), True
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
            path.unlink(missing_ok=True)
    was_training = model.training
    model.eval()
    try:
        scores = CRITERIA[criterion](model, layers, windows, head_dim)
    finally:
        model.train(was_training)
    if path is not None:
        tmp = path.with_suffix(".tmp")
        save_file({"attn": scores.attn, "mlp": scores.mlp}, str(tmp))
        tmp.replace(path)
    return scores, False
