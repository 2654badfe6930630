"""Statistics of the projection inputs over calibration tokens (``ActivationStats``): the norms,
means, variances and covariances that the importance criteria (``importance.py``) and the
compensation of removed units (``compensation.py``) read, collected by forward pre-hooks.
"""

from __future__ import annotations

import torch

from evoprune.backend.adapters import LayerParts
from evoprune.backend.memory_headroom import require_memory

# Held per element of the covariances at the peak of scoring: the float64 sums, then the float32
# copy cached and read by the re-fit (``importance._covariances`` frees each sum as it copies it).
ACCUMULATOR_BYTES, COPY_BYTES = 8, 4
# What to do when the covariances do not fit.
COVARIANCE_INSTEAD = (
    "score with --importance flap and compensate with --compensation bias, which need no covariances, "
    "or use a machine with more memory"
)


class ActivationStats:
    """Per-feature sums and sums of squares (float64) of projection inputs over calibration tokens.

    Keys: ``attn_in`` (input of q, k and v), ``o_in``, ``mlp_in`` (input of gate and up), ``down_in``.
    With ``covariance``, also the sums of outer products ``x x^T`` of the ``o`` and ``down`` inputs;
    ``copied``: a float32 copy of them will be made on the host (cached for the re-fit), which the
    memory check counts too.
    """

    KEYS = ("attn_in", "o_in", "mlp_in", "down_in")
    COVARIANCE_KEYS = ("o_in", "down_in")

    def __init__(self, layers: list[LayerParts], covariance: bool = False, copied: bool = False):
        self.layers = layers
        self.covariance = covariance
        self.copied = covariance and copied
        self.sums: dict[tuple[int, str], torch.Tensor] = {}
        self.sumsq: dict[tuple[int, str], torch.Tensor] = {}
        self.outer: dict[tuple[int, str], torch.Tensor] = {}
        self.count: dict[tuple[int, str], int] = {}

    @property
    def collected(self) -> bool:
        return bool(self.count)

    def attach(self) -> list:
        """Register forward pre-hooks that accumulate; returns the handles (remove them after)."""

        def hook(key):
            def fn(_module, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                self.sums[key] = self.sums.get(key, 0) + x.sum(dim=0)
                self.sumsq[key] = self.sumsq.get(key, 0) + (x * x).sum(dim=0)
                self.count[key] = self.count.get(key, 0) + x.shape[0]
                if self.covariance and key[1] in self.COVARIANCE_KEYS:
                    # float32 products per window (exact enough, half the time), summed in float64
                    xf = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                    self.outer[key] = self.outer.get(key, 0) + (xf.T @ xf).double()

            return fn

        handles = []
        for i, p in enumerate(self.layers):
            for key, module in zip(self.KEYS, (p.q, p.o, p.up, p.down), strict=True):
                handles.append(module.register_forward_pre_hook(hook((i, key))))
        return handles

    def covariance_elements(self) -> int:
        """Values of the covariances of every layer's ``o`` and ``down`` inputs:
        ``sum(o.in_features**2 + down.in_features**2)`` (80.7M for SmolLM2-135M, 4.41G for Llama-2-7B)."""
        return sum(p.o.in_features**2 + p.down.in_features**2 for p in self.layers)

    def check_memory(self, device: torch.device) -> None:
        """Refuse (EvopruneError) covariances the machine cannot hold, before the pass that sums them:
        the float64 sums on ``device``, and with ``copied`` their float32 copy on the host, at once."""
        if not self.covariance:
            return
        n = self.covariance_elements()
        what = f"the calibration covariances of {len(self.layers)} layers' o and down inputs ({n:,} values)"
        copy = COPY_BYTES * n if self.copied else 0
        if torch.device(device).type == "cuda":
            require_memory(ACCUMULATOR_BYTES * n, device, what, COVARIANCE_INSTEAD)
            if copy:
                require_memory(copy, "cpu", what, COVARIANCE_INSTEAD)
        else:
            require_memory(ACCUMULATOR_BYTES * n + copy, "cpu", what, COVARIANCE_INSTEAD)

    def collect(self, model, windows: torch.Tensor) -> None:
        """One inference pass over ``windows`` (n_windows, seq_len), unless already collected.
        Raises EvopruneError when the covariances asked for would not fit in memory."""
        if self.collected:
            return
        self.check_memory(model.device)
        handles = self.attach()
        try:
            with torch.inference_mode():
                for row in windows:
                    model(input_ids=row[None].to(model.device))
        finally:
            for h in handles:
                h.remove()

    def norm(self, i: int, key: str) -> torch.Tensor:
        """L2 norm of each input feature over the tokens: (in_features,), float64."""
        return self.sumsq[(i, key)].sqrt()

    def mean(self, i: int, key: str) -> torch.Tensor:
        return self.sums[(i, key)] / self.count[(i, key)]

    def covariance_matrix(self, i: int, key: str) -> torch.Tensor:
        """Population covariance of the input features over the tokens: (in, in), float64."""
        mean = self.mean(i, key)
        return self.outer[(i, key)] / self.count[(i, key)] - torch.outer(mean, mean)

    def variance(self, i: int, key: str) -> torch.Tensor:
        """Population variance of each input feature over the tokens (clamped at 0 against rounding)."""
        mean = self.mean(i, key)
        return (self.sumsq[(i, key)] / self.count[(i, key)] - mean * mean).clamp_min(0.0)
