"""Greedy Optimal Brain Surgeon order of a projection's input units, for the ``obs`` criterion.

Structured OBS as ZipLM (Kurtic et al. 2023, arXiv 2302.04089) and SlimGPT (Ling et al. 2024,
arXiv 2412.18110) prune: remove from a projection ``W`` (out, in) the input unit (an MLP channel,
or the ``head_dim`` features of a head) whose removal, followed by the least-squares update of the
remaining columns, raises the output's squared error least; update; repeat. With ``H`` the
(dampened) covariance of the input over the calibration tokens and a unit's features ``U``, that
error is ``tr(W[:, U] (H^-1[U, U])^-1 W[:, U]^T)``, and the update is
``W -= W[:, U] (H^-1[U, U])^-1 H^-1[U, :]``, ``H^-1 -= H^-1[:, U] (H^-1[U, U])^-1 H^-1[U, :]``.

It is the selection that matches ``refit`` compensation (``compensation.py``), which solves the
same least-squares problem for the kept set at the end: an importance score that ranks units by
their own weights and activations alone ignores what the kept units can take over after a re-fit.
The centred covariance is used (``refit`` also re-fits the bias, which absorbs the mean).

Removing one unit per step costs a rank-``|U|`` update of ``H^-1`` each; for many small units
(MLP channels) ``block`` units are removed per step, as SlimGPT's batched greedy does, each
scored by its own error at that step.
"""

from __future__ import annotations

import numpy as np
import torch

# Relative dampening of the covariance, as the re-fit's (SparseGPT's ``percdamp`` default).
DAMPING = 0.01
# Steps of the batched greedy for channels: about this many, whatever the intermediate size.
CHANNEL_STEPS = 64


def greedy_obs_scores(
    weight: torch.Tensor, cov: torch.Tensor, unit_size: int = 1, block: int | None = None
) -> np.ndarray:
    """Importance of each input unit of ``weight``: the output error its removal adds when greedy OBS removes it.

    ``weight``: (out, in); ``cov``: (in, in), the covariance of the projection's input over the
    calibration tokens; ``unit_size``: consecutive input features per unit (1 for MLP channels,
    ``head_dim`` for heads); ``block``: units removed per step (default: 1 for heads, about
    ``in / CHANNEL_STEPS`` for channels). Returns (in // unit_size,) float64 scores in units of
    squared output error per token: a unit's score is the error its removal adds at the step
    greedy OBS removes it (with the update of the rest), raised where needed to just above the
    score of the unit removed before it, so the scores increase strictly in the order greedy OBS
    removes the units (higher: more important; removing the lowest scores is greedy OBS's choice).
    A unit's own added error, not the cumulative error, so scores can be summed over a group
    (a KV group's heads) and compared across layers as the other criteria's are (FLAP's global
    ranking, OWL). With ``block`` > 1 each unit of a block is scored by its own error at that step.
    """
    # A broken unit (weights or inputs not finite) counts as carrying nothing: it goes first,
    # and its NaNs do not spread through the updates to every other unit's score.
    # On a CUDA weight's device: a GPU orders a 7B model's 11,008 channels in seconds, a CPU in
    # minutes (MPS has no float64, so it orders on the CPU).
    device = weight.device if weight.device.type == "cuda" else torch.device("cpu")
    w = torch.nan_to_num(weight.detach().to(device=device, dtype=torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    c = torch.as_tensor(cov).to(device=w.device, dtype=torch.float64)
    c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
    n = w.shape[1] // unit_size
    if block is None:
        block = 1 if unit_size > 1 else max(1, n // CHANNEL_STEPS)
    hinv = _dampened_inverse(c)
    units = torch.arange(n, device=w.device)  # the units still there, in the order of their columns in w and hinv
    scores = np.zeros(n)
    level = 0.0
    while len(units):
        cols = torch.arange(len(units) * unit_size, device=w.device).reshape(len(units), unit_size)
        costs = _removal_errors(w, hinv, cols)
        order = torch.argsort(costs)[:block]
        for u, cost in zip(units[order].tolist(), costs[order].tolist(), strict=True):
            # Strictly increasing, so the ranking is greedy OBS's order even where a later unit
            # adds less error than an earlier one, errors are 0, or an error overflowed (inf or
            # NaN: argsort puts those last, and they must neither tie nor stop the order).
            above = float(np.nextafter(level, np.inf))
            level = max(cost, above) if np.isfinite(cost) else above
            scores[u] = level
        idx = cols[order].flatten()
        keep = torch.ones(len(units), dtype=torch.bool, device=w.device)
        keep[order] = False
        rest = cols[keep].flatten()
        # The update restricted to the features that stay (the removed ones are dropped): the
        # matrices shrink as units go, so the whole order costs about a third of fixed-size updates.
        step = torch.linalg.solve(hinv[idx][:, idx], hinv[idx][:, rest])  # (|idx|, |rest|)
        w = w[:, rest] - w[:, idx] @ step
        hinv = hinv[rest][:, rest] - hinv[rest][:, idx] @ step
        units = units[keep]
    return scores


def _dampened_inverse(c: torch.Tensor) -> torch.Tensor:
    """``(c + lambda I)^-1`` with ``lambda`` = ``DAMPING`` x the mean of ``diag c``, raised tenfold
    until the Cholesky factorisation succeeds (a covariance computed as ``E[x x^T] - m m^T`` in
    floating point can be slightly indefinite, e.g. with near-constant features)."""
    eye = torch.eye(len(c), dtype=torch.float64, device=c.device)
    scale = c.diagonal().mean().clamp_min(1e-12)
    for tries in range(8):
        chol, info = torch.linalg.cholesky_ex(c + DAMPING * 10**tries * scale * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(chol)
    return torch.diag(1.0 / (c.diagonal().clamp_min(0.0) + DAMPING * scale))  # no usable correlations: diagonal


def _removal_errors(w: torch.Tensor, hinv: torch.Tensor, unit_cols: torch.Tensor) -> torch.Tensor:
    """Output error of removing each unit alone (rows of ``unit_cols``) with the OBS update: (units,)."""
    if unit_cols.shape[1] == 1:
        idx = unit_cols[:, 0]
        return (w[:, idx] ** 2).sum(dim=0) / hinv.diagonal()[idx]
    blocks = hinv[unit_cols[:, :, None], unit_cols[:, None, :]]  # (units, size, size)
    wu = w[:, unit_cols].permute(1, 0, 2)  # (units, out, size)
    return (wu * torch.linalg.solve(blocks, wu.transpose(1, 2)).transpose(1, 2)).sum(dim=(1, 2))
