"""Statistics of the projection inputs over calibration tokens (``ActivationStats``): the norms,
means, variances and covariances that the importance criteria (``importance.py``) and the
compensation of removed units (``compensation.py``) read, collected by forward pre-hooks.

The covariances are summed for as many layers at a time as memory holds, as SparseGPT and Wanda
calibrate a layer at a time: a 7B model's float64 sums are 35 GB, which few machines can hold at
once beside the model. The first calibration pass sums every layer's per-feature statistics and
the covariances of the first layers; a later pass, stopped after the last layer it sums, sums the
next layers' when they are first asked for. Each layer's sums are freed (after their float32 copy
is written, when one is kept) before the next layers' are summed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from evoprune.backend.adapters import LayerParts
from evoprune.backend.memory_headroom import available_bytes, require_memory

# Bytes per covariance value: the float64 sums, and the float32 copy the re-fit reads (on disk
# when it is cached, ``sink``; otherwise in memory too).
ACCUMULATOR_BYTES, COPY_BYTES = 8, 4
# The share of the available memory the sums of one pass may take: the rest is left for the
# pass's activations and whatever else the process allocates meanwhile.
SUMS_SHARE = 0.8
# What to do when the covariances do not fit.
NO_COVARIANCES = "score with --importance flap and compensate with --compensation bias, which need no covariances"
COVARIANCE_INSTEAD = NO_COVARIANCES + ", or use a machine with more memory"
# ``ActivationStats`` keys of the covariances -> the names ``write_covariances`` gives them.
COVARIANCE_NAMES = {"o_in": "o_cov", "down_in": "down_cov"}


class _PassDone(Exception):
    """Ends a calibration pass once the last layer it sums has seen its inputs."""


class ActivationStats:
    """Per-feature sums and sums of squares (float64) of projection inputs over calibration tokens.

    Keys: ``attn_in`` (input of q, k and v), ``o_in``, ``mlp_in`` (input of gate and up), ``down_in``.
    With ``covariance``, also the sums of outer products ``x x^T`` of the ``o`` and ``down`` inputs,
    ``layers_per_pass`` layers at a time (``plan_passes``). ``copied``: their float32 copy is kept
    (``write_covariances``), in ``sink`` (name -> writable ``(num_layers, in, in)`` float32 arrays,
    a memory-mapped cache entry being written, say) or, without one, in memory, which the memory
    plan then counts too.
    """

    KEYS = ("attn_in", "o_in", "mlp_in", "down_in")
    COVARIANCE_KEYS = tuple(COVARIANCE_NAMES)

    def __init__(
        self,
        layers: list[LayerParts],
        covariance: bool = False,
        copied: bool = False,
        sink: dict[str, np.ndarray] | None = None,
    ):
        self.layers = layers
        self.covariance = covariance
        self.copied = covariance and copied
        self.sink = sink
        self.sums: dict[tuple[int, str], torch.Tensor] = {}
        self.sumsq: dict[tuple[int, str], torch.Tensor] = {}
        self.outer: dict[tuple[int, str], torch.Tensor] = {}
        self.count: dict[tuple[int, str], int] = {}
        self.layers_per_pass = len(layers)
        self.passes = 0  # calibration passes run so far
        self._source = None  # (model, windows) of the first pass, which later passes read again
        self._written: set[int] = set()  # layers whose covariances are in the sink

    @property
    def collected(self) -> bool:
        return bool(self.count)

    def covariance_elements(self) -> int:
        """Values of the covariances of every layer's ``o`` and ``down`` inputs:
        ``sum(o.in_features**2 + down.in_features**2)`` (80.7M for SmolLM2-135M, 4.41G for Llama-2-7B)."""
        return sum(_layer_elements(p) for p in self.layers)

    def plan_passes(self, device: torch.device | str) -> None:
        """Set ``layers_per_pass``: as many layers as ``SUMS_SHARE`` of ``device``'s available memory
        holds the float64 sums of (all of them when they fit), besides the float32 copy when it is
        kept in memory. Raises EvopruneError, before any pass, when not even one layer fits."""
        if not self.covariance:
            return
        device = torch.device(device)
        per_layer = ACCUMULATOR_BYTES * max(_layer_elements(p) for p in self.layers)
        copy = COPY_BYTES * self.covariance_elements() if self.copied and self.sink is None else 0
        what = (
            f"the calibration covariances of {len(self.layers)} layers' o and down inputs "
            f"({self.covariance_elements():,} values, summed a layer or more at a time)"
        )
        if device.type == "cuda":
            require_memory(copy, "cpu", what, COVARIANCE_INSTEAD)
            have = available_bytes(device)
        else:
            have = available_bytes(device) - copy
        fits = int(SUMS_SHARE * have) // per_layer
        if fits < 1:
            need = -(-per_layer // SUMS_SHARE)
            require_memory(int(need) + (0 if device.type == "cuda" else copy), device, what, COVARIANCE_INSTEAD)
        self.layers_per_pass = max(1, min(len(self.layers), fits))

    def attach(self, device: torch.device | str = "cpu") -> list:
        """Register forward pre-hooks that accumulate every layer's per-feature statistics and the
        covariances of the first ``layers_per_pass`` layers; returns the handles (remove them after).
        Raises EvopruneError when not one layer's covariance sums fit (``plan_passes``)."""
        self.plan_passes(device)
        first = range(self.layers_per_pass) if self.covariance else range(0)
        return self._hooks(per_feature=True, summed=first)

    def collect(self, model, windows: torch.Tensor) -> None:
        """One inference pass over ``windows`` (n_windows, seq_len), unless already collected; the
        covariances of layers past the first pass's are summed when first asked for, by passes over
        the same windows. Raises EvopruneError when not one layer's covariance sums fit in memory."""
        self._source = (model, windows)
        if self.collected:
            return
        handles = self.attach(model.device)
        self._run(model, windows, handles)

    def norm(self, i: int, key: str) -> torch.Tensor:
        """L2 norm of each input feature over the tokens: (in_features,), float64."""
        return self.sumsq[(i, key)].sqrt()

    def mean(self, i: int, key: str) -> torch.Tensor:
        return self.sums[(i, key)] / self.count[(i, key)]

    def covariance_matrix(self, i: int, key: str) -> torch.Tensor:
        """Population covariance of the input features over the tokens: (in, in), float64; from the
        float32 copy once layer ``i``'s sums are freed, and summed by a further pass if not yet."""
        if (i, key) not in self.outer:
            if i in self._written:
                return torch.from_numpy(np.asarray(self.sink[COVARIANCE_NAMES[key]][i], dtype=np.float64))
            self._sum_from(i)
        mean = self.mean(i, key)
        return self.outer[(i, key)] / self.count[(i, key)] - torch.outer(mean, mean)

    def variance(self, i: int, key: str) -> torch.Tensor:
        """Population variance of each input feature over the tokens (clamped at 0 against rounding)."""
        mean = self.mean(i, key)
        return (self.sumsq[(i, key)] / self.count[(i, key)] - mean * mean).clamp_min(0.0)

    def write_covariances(self) -> dict[str, np.ndarray]:
        """Every layer's covariances as float32, ``(num_layers, in, in)`` per name (``o_cov``,
        ``down_cov``), in ``sink`` (allocated in memory when there is none); each layer's float64
        sums are freed once copied, so at most one pass's sums and the copy are held at once."""
        for i in range(len(self.layers)):
            self._write(i)
        return self.sink

    # -- the passes ------------------------------------------------------------------------------

    def _hooks(self, per_feature: bool, summed: range, stop_after: int | None = None) -> list:
        def hook(key, cov: bool, stop: bool):
            def fn(_module, args):
                if per_feature:
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                    self.sums[key] = self.sums.get(key, 0) + x.sum(dim=0)
                    self.sumsq[key] = self.sumsq.get(key, 0) + (x * x).sum(dim=0)
                    self.count[key] = self.count.get(key, 0) + x.shape[0]
                if cov:
                    # float32 products per window (exact enough, half the time), summed in float64
                    xf = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                    self.outer[key] = self.outer.get(key, 0) + (xf.T @ xf).double()
                if stop:
                    raise _PassDone

            return fn

        handles = []
        for i, p in enumerate(self.layers):
            for key, module in zip(self.KEYS, (p.q, p.o, p.up, p.down), strict=True):
                cov = i in summed and key in self.COVARIANCE_KEYS
                stop = i == stop_after and key == "down_in"
                if per_feature or cov or stop:
                    handles.append(module.register_forward_pre_hook(hook((i, key), cov, stop)))
        return handles

    def _run(self, model, windows: torch.Tensor, handles: list) -> None:
        self.passes += 1
        try:
            with torch.inference_mode():
                for row in windows:
                    with contextlib.suppress(_PassDone):
                        model(input_ids=row[None].to(model.device))
        finally:
            for h in handles:
                h.remove()

    def _sum_from(self, i: int) -> None:
        """Free the sums held (copied first when kept), then sum layers ``i`` onwards, as many as a
        pass holds, in a pass stopped after the last of them."""
        if self._source is None:
            raise RuntimeError("ActivationStats.collect must run before covariances are read")
        for j in sorted({j for j, _ in self.outer}):
            if self.copied:
                self._write(j)
            else:
                for key in self.COVARIANCE_KEYS:
                    self.outer.pop((j, key), None)
        layers = range(i, min(len(self.layers), i + self.layers_per_pass))
        model, windows = self._source
        self._run(model, windows, self._hooks(per_feature=False, summed=layers, stop_after=layers[-1]))

    def _write(self, i: int) -> None:
        if i in self._written:
            return
        for key, name in COVARIANCE_NAMES.items():
            cov = self.covariance_matrix(i, key).float().cpu().numpy()
            if self.sink is None:
                self.sink = {}
            if name not in self.sink:
                self.sink[name] = np.empty((len(self.layers), *cov.shape), dtype=np.float32)
            self.sink[name][i] = cov
            del self.outer[(i, key)]
        self._written.add(i)


def _layer_elements(p: LayerParts) -> int:
    return p.o.in_features**2 + p.down.in_features**2
