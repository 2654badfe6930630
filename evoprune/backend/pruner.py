"""The backend facade the engine talks to: one loaded model, scored once, evaluated many times."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from evoprune.backend.adapters import adapter_for
from evoprune.backend.data import TextSource, token_windows
from evoprune.backend.evaluate import perplexity
from evoprune.backend.importance import Importance, compute_importance, importance_cache_key
from evoprune.backend.loading import LoadedModel
from evoprune.backend.masking import MaskedModel
from evoprune.backend.plan import LayerPlan, resolve_plan
from evoprune.backend.slicing import slice_model
from evoprune.space import SearchSpace


@dataclass(frozen=True)
class BackendSettings:
    criterion: str = "wanda"
    eval_tokens: int = 1024
    calib_tokens: int = 2048
    seq_len: int = 256
    batch_size: int = 4
    head_unit: str = "query_head"
    attn_levels: int = 0
    mlp_levels: int = 8
    mlp_multiple: int = 1


@dataclass
class Measurement:
    """What one real evaluation produced."""

    metrics: dict
    ok: bool
    error: str | None
    duration_s: float


class PruningBackend:
    """Loads nothing itself: give it a loaded model and text; it scores, masks and evaluates."""

    def __init__(self, loaded: LoadedModel, text: TextSource, settings: BackendSettings):
        self.loaded = loaded
        self.text = text
        self.settings = settings
        model = loaded.model
        self.adapter = adapter_for(model.config)
        arch = self.adapter.arch_spec(model.config)
        self.space = SearchSpace(
            arch,
            head_unit=settings.head_unit,
            attn_levels=settings.attn_levels,
            mlp_levels=settings.mlp_levels,
            mlp_multiple=settings.mlp_multiple,
        )
        # Evaluation windows come first in the text, calibration windows right after them,
        # so importance is never scored on the tokens that judge the result.
        self.eval_windows = token_windows(loaded.tokenizer, text.text, settings.eval_tokens, settings.seq_len)
        self.calib_windows = token_windows(
            loaded.tokenizer, text.text, settings.calib_tokens, settings.seq_len, skip_tokens=settings.eval_tokens
        )
        self.importance: Importance | None = None
        self.importance_cached = False
        self._masked: MaskedModel | None = None

    @property
    def data_fingerprint(self) -> str:
        s = self.settings
        return f"{self.text.fingerprint}:{s.eval_tokens}:{s.calib_tokens}:{s.seq_len}"

    def score(self) -> Importance:
        """Compute (or load from the cache) the importance of every head and channel."""
        if self.importance is None:
            key = importance_cache_key(
                self.loaded.fingerprint, self.data_fingerprint, self.settings.criterion, self.settings.calib_tokens
            )
            self.importance, self.importance_cached = compute_importance(
                self.loaded.model,
                self.adapter.layers(self.loaded.model),
                self.calib_windows,
                self.space.arch.head_dim,
                self.settings.criterion,
                cache_key=key,
            )
        return self.importance

    def plan(self, x) -> list[LayerPlan]:
        return resolve_plan(self.space, x, self.score())

    def evaluate(self, x) -> Measurement:
        """Perplexity of configuration ``x`` on the evaluation windows, through masks."""
        plans = self.plan(x)
        if self._masked is None:
            arch = self.space.arch
            self._masked = MaskedModel(
                self.loaded.model, self.adapter.layers(self.loaded.model), arch.num_heads, arch.head_dim
            )
        start = time.perf_counter()
        try:
            self._masked.apply(plans)
            ppl = perplexity(self.loaded.model, self.eval_windows, self.settings.batch_size)
            error = None if math.isfinite(ppl) else "non-finite perplexity (the pruned model collapsed)"
        except (RuntimeError, MemoryError) as exc:
            ppl, error = math.nan, f"{type(exc).__name__}: {exc}"
        finally:
            self._masked.reset()
        duration = time.perf_counter() - start
        metrics = {"ppl": ppl} if error is None else {}
        return Measurement(metrics=metrics, ok=error is None, error=error, duration_s=duration)

    def sliced_copy(self, x) -> torch.nn.Module:
        """A physically pruned copy of the model (the dense one stays untouched)."""
        plans = self.plan(x)
        if self._masked is not None:
            self._masked.remove()
            self._masked = None
        model = copy.deepcopy(self.loaded.model)
        return slice_model(model, self.adapter.layers(model), plans, self.space.arch.head_dim)
