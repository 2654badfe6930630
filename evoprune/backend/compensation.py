"""Compensation of what pruned heads and channels contributed: a bias, or a least-squares re-fit.

Both act on the projections that read the pruned units, ``o`` (input: the heads' features) and
``down`` (input: the MLP channels), and both are computed from the dense model's inputs to those
projections over the calibration tokens.

``bias`` is FLAP's bias compensation (An et al. 2024, "Fluctuation-based Adaptive Structured
Pruning for Large Language Models", github.com/CASIA-IVA-Lab/FLAP ``lib/prune.py:compress``): the
removed input features ``R`` of a projection contributed ``W[:, R] @ x[R]`` to its output;
replacing ``x[R]`` by its mean over the calibration tokens turns that into a constant, added to the
projection's bias (one is created where the model has none).

``refit`` re-fits the kept columns and the bias by least squares, as the structured pruners that
update weights do (ZipLM, Kurtic et al. 2023; SlimGPT, Ling et al. 2024; DarwinLM, Tang et al.
2025), here in closed form from the dense inputs' mean ``mu`` and covariance ``C``: with kept
features ``S``, ``W' = W C[:, S] (C[S, S] + lambda I)^-1`` and ``b' = b + W mu - W' mu[S]``
minimise the mean squared error of the projection's output over the calibration tokens.
``lambda`` is ``DAMPING`` times the mean of ``diag C[S, S]`` (SparseGPT's dampening), which keeps
the solve stable when kept features are nearly collinear. Where removed features are uncorrelated
with the kept ones, ``refit`` is ``bias`` exactly; it can only do better on the calibration tokens.

A wholly removed sub-layer gets the bias rule with every feature removed (under both methods): its
output becomes the constant ``W @ mean(x) + b``, carried by the stand-in module. It is the
constant closest (in mean squared error over the calibration tokens) to what the sub-layer
produced, so removing the last unit is not a cliff in the search space; it costs
``hidden_size`` parameters per sub-layer, as a bias does. Neither method changes a shape, so the
parameter count is the same under both.

The tensors are computed here once per plan and handed, as the same tensors, to masked evaluation
(``masking.IndexedLinear``), slicing and export, so all three run the same ``F.linear`` call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from evoprune.backend.adapters import LayerParts
from evoprune.backend.importance import Importance
from evoprune.backend.plan import LayerPlan
from evoprune.errors import EvopruneError

COMPENSATIONS = ("none", "bias", "refit")
# Relative dampening of the re-fit's normal equations (SparseGPT's ``percdamp`` default).
DAMPING = 0.01


@dataclass(frozen=True)
class LayerCompensation:
    """What compensation gives one layer's ``o`` and ``down`` projections; ``None`` where nothing changes.

    ``o`` / ``down``: the new bias, ``(hidden_size,)`` in the weight's dtype and device (for a
    removed sub-layer: its constant output). ``o_weight`` / ``down_weight``: re-fitted weights of
    the kept input features, ``(hidden_size, kept features)`` (``refit`` only).
    """

    o: torch.Tensor | None = None
    down: torch.Tensor | None = None
    o_weight: torch.Tensor | None = None
    down_weight: torch.Tensor | None = None


def _removed(linear, kept: torch.Tensor) -> torch.Tensor:
    removed = torch.ones(linear.in_features, dtype=torch.bool)
    removed[kept] = False
    return removed


def _folded(linear, kept: torch.Tensor, mean) -> torch.Tensor | None:
    """``linear``'s bias plus ``W[:, removed] @ mean[removed]``, or None when nothing is removed."""
    removed = _removed(linear, kept)
    if not bool(removed.any()):
        return None
    w = linear.weight.detach().double().cpu()[:, removed]
    contribution = w * torch.as_tensor(mean, dtype=torch.float64)[removed]
    # A removed unit whose weights or mean are not finite (a broken channel) must not break the
    # pruned model through its compensation: removing it is what heals the model.
    bias = torch.where(torch.isfinite(contribution), contribution, 0.0).sum(dim=1)
    if linear.bias is not None:
        bias = bias + linear.bias.detach().double().cpu()
    return bias.to(dtype=linear.weight.dtype, device=linear.weight.device)


def refit_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, kept: torch.Tensor, mean, cov, damping: float = DAMPING
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Least-squares weights of the kept input features and bias (float64, CPU); see the module docstring.

    ``weight`` (out, in), ``bias`` (out,) or None, ``kept`` (k,) feature indices with 0 < k < in,
    ``mean`` (in,) and ``cov`` (in, in) of the dense input over the calibration tokens. Returns
    ``(weight' (out, k), bias' (out,))``, or None when the inputs are not finite or the normal
    equations are singular (the caller then falls back to the bias rule).
    """
    w = weight.detach().double().cpu()
    mu = torch.as_tensor(mean, dtype=torch.float64)
    # A copy: the cached covariances are a read-only memory map (``importance_cache.map_entry``).
    c = torch.from_numpy(cov.astype(np.float64)) if isinstance(cov, np.ndarray) else torch.as_tensor(cov).double()
    c_ss = c[kept][:, kept]
    c_ss = c_ss + damping * c_ss.diagonal().mean().clamp_min(0.0) * torch.eye(len(kept), dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(c_ss)
    if int(info) != 0:
        return None
    new_w = torch.cholesky_solve(c[kept] @ w.T, chol).T.contiguous()
    new_b = w @ mu - new_w @ mu[kept]
    if bias is not None:
        new_b = new_b + bias.detach().double().cpu()
    if not (bool(torch.isfinite(new_w).all()) and bool(torch.isfinite(new_b).all())):
        return None
    return new_w, new_b


class RefitMemo:
    """Re-fits already solved, by (layer, projection, kept features), within ``max_bytes``.

    The kept features of a layer follow from its level and the importance ranking alone, so a
    search meets the same few per layer again and again; solving each once makes ``refit`` cost
    about what ``bias`` does after the first candidates.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(value) -> int:
        return 0 if value is None else sum(t.numel() * t.element_size() for t in value)

    def get(self, key: tuple, compute):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self._items[key] = value
        self._bytes += self._size(value)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= self._size(old)
        return value


def _refitted(
    linear, kept: torch.Tensor, mean, cov, memo: RefitMemo | None, key: tuple
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) of ``linear`` re-fitted on ``kept``; ``(None, None)`` when nothing is removed."""
    removed = _removed(linear, kept)
    if not bool(removed.any()):
        return None, None
    if len(kept) == 0:
        return None, _folded(linear, kept, mean)

    def solve():
        fit = refit_linear(linear.weight, linear.bias, kept, mean, cov)
        if fit is None:
            return None
        return tuple(t.to(dtype=linear.weight.dtype, device=linear.weight.device) for t in fit)

    fit = memo.get((*key, kept.numpy().tobytes()), solve) if memo is not None else solve()
    if fit is None:  # singular or not finite: FLAP's bias, which needs no solve
        return None, _folded(linear, kept, mean)
    return fit


def _features(plan: LayerPlan, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_feat = torch.tensor([h * head_dim + j for h in plan.q_heads for j in range(head_dim)], dtype=torch.long)
    return q_feat, torch.tensor(plan.mlp_channels, dtype=torch.long)


def bias_compensation(
    layers: list[LayerParts], plans: list[LayerPlan], importance: Importance, head_dim: int
) -> list[LayerCompensation]:
    """FLAP bias compensation for every layer of a plan (see the module docstring).

    Raises EvopruneError when ``importance`` carries no calibration means (score with ``with_means``).
    """
    if importance.o_mean is None or importance.down_mean is None:
        raise EvopruneError("bias compensation needs the calibration means: score importance with with_means=True")
    out = []
    for parts, plan in zip(layers, plans, strict=True):
        q_feat, channels = _features(plan, head_dim)
        out.append(
            LayerCompensation(
                o=_folded(parts.o, q_feat, importance.o_mean[parts.index]),
                down=_folded(parts.down, channels, importance.down_mean[parts.index]),
            )
        )
    return out


def refit_compensation(
    layers: list[LayerParts],
    plans: list[LayerPlan],
    importance: Importance,
    head_dim: int,
    memo: RefitMemo | None = None,
) -> list[LayerCompensation]:
    """Least-squares re-fit of ``o`` and ``down`` for every layer of a plan (see the module docstring).

    Raises EvopruneError when ``importance`` carries no calibration means and covariances (score
    with ``with_means`` and ``with_covariance``).
    """
    if importance.o_cov is None or importance.down_cov is None or importance.o_mean is None:
        raise EvopruneError(
            "refit compensation needs the calibration covariances: score importance with with_covariance=True"
        )
    out = []
    for parts, plan in zip(layers, plans, strict=True):
        i = parts.index
        q_feat, channels = _features(plan, head_dim)
        o_w, o_b = _refitted(parts.o, q_feat, importance.o_mean[i], importance.o_cov[i], memo, (i, "o"))
        d_w, d_b = _refitted(parts.down, channels, importance.down_mean[i], importance.down_cov[i], memo, (i, "down"))
        out.append(LayerCompensation(o=o_b, down=d_b, o_weight=o_w, down_weight=d_w))
    return out


def compensate(
    method: str,
    layers: list[LayerParts],
    plans: list[LayerPlan],
    importance: Importance,
    head_dim: int,
    memo: RefitMemo | None = None,
) -> list[LayerCompensation] | None:
    """What ``method`` gives a plan: None for ``none``. Raises EvopruneError for an unknown method."""
    if method == "none":
        return None
    if method == "bias":
        return bias_compensation(layers, plans, importance, head_dim)
    if method == "refit":
        return refit_compensation(layers, plans, importance, head_dim, memo)
    raise EvopruneError(f"--compensation {method!r} is unknown: use one of {', '.join(COMPENSATIONS)}")
