"""The backend facade the engine talks to: one loaded model, scored once, evaluated many times."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from evoprune.backend.adapters import adapter_for
from evoprune.backend.compensation import LayerCompensation, RefitMemo, compensate
from evoprune.backend.data import TextSource, load_text, token_windows
from evoprune.backend.evaluate import DenseReference, dense_reference, quality
from evoprune.backend.importance import Importance, compute_importance, importance_cache_key
from evoprune.backend.loading import LoadedModel, load_config, load_model, require_context, resolve_model
from evoprune.backend.masking import MaskedModel
from evoprune.backend.plan import LayerPlan, resolve_plan
from evoprune.backend.settings import BackendSettings
from evoprune.backend.slicing import slice_model
from evoprune.errors import EvopruneError
from evoprune.space import SearchSpace

# The error of a configuration whose model collapsed: an outcome of the configuration, not a fault.
COLLAPSED = "non-finite perplexity or KL (the pruned model collapsed)"


@dataclass
class Measurement:
    """What one real evaluation produced."""

    metrics: dict
    ok: bool
    error: str | None
    duration_s: float


class PruningBackend:
    """Give it a loaded model and text; it scores, masks, evaluates and slices.

    ``space`` is the level grid as a run or plan recorded it (``SearchSpace.from_dict``), so
    stored levels mean what they meant when recorded; by default it is built from ``settings``.
    Raises EvopruneError when ``space`` is not of this model's architecture.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        text: TextSource,
        settings: BackendSettings,
        calib_text: TextSource | None = None,
        space: SearchSpace | None = None,
    ):
        self.loaded = loaded
        self.text = text
        self.calib_text = calib_text
        self.settings = settings
        model = loaded.model
        self.adapter = adapter_for(model.config)
        arch = self.adapter.arch_spec(model.config)
        if space is None:
            space = SearchSpace(
                arch,
                head_unit=settings.head_unit,
                attn_levels=settings.attn_levels,
                mlp_levels=settings.mlp_levels,
                mlp_multiple=settings.mlp_multiple,
                compensation_bias=settings.compensation != "none",
            )
        elif (space.arch, space.compensation_bias) != (arch, settings.compensation != "none"):
            raise EvopruneError(
                f"the recorded search space ({space.arch.model_type}, {space.num_layers} layers) is not the one of "
                f"model '{loaded.source.spec}' ({arch.model_type}, {arch.num_layers} layers): check the model"
            )
        self.space = space
        require_context(model.config, settings.seq_len)
        tok = loaded.tokenizer
        # One stretch of the evaluation text, in this order: the rungs' windows (disjoint: each
        # rung after the lower ones; nested: each rung a prefix of the largest), the calibration
        # windows (when scored on the same text), the validation windows. No token judges a
        # result that it helped to choose or to score.
        search = settings.search_tokens
        self.text_layout = self._text_layout(calib_here=calib_text is None)
        self.search_windows = token_windows(tok, text.text, search, settings.seq_len, layout=self.text_layout)
        self.eval_windows = self.search_windows[self.rung_span(settings.eval_tokens)]
        used = search
        if calib_text is None:
            self.calib_windows = token_windows(
                tok, text.text, settings.calib_tokens, settings.seq_len, skip_tokens=used, layout=self.text_layout
            )
            used += settings.calib_tokens
        else:
            self.calib_windows = token_windows(
                tok, calib_text.text, settings.calib_tokens, settings.seq_len,
                layout=f" (calibration: --calib-tokens {settings.calib_tokens} of --calib-data)",
            )  # fmt: skip
        self.validation_skip = used
        self._validation_windows: torch.Tensor | None = None
        self._validation_reference: DenseReference | bool | None = None
        self.importance: Importance | None = None
        self.importance_cached = False
        self._reference: DenseReference | bool | None = None
        self._masked: MaskedModel | None = None
        self._refits = RefitMemo()
        # Called by evaluate() while the configuration is applied; each returns more metrics
        # (e.g. evoprune.tasks.TaskEvaluator: {"acc:arc_easy": ...}).
        self.extra_metrics: list[Callable[[PruningBackend], dict[str, float]]] = []
        self._siblings: dict[BackendSettings, PruningBackend] = {}

    @property
    def data_fingerprint(self) -> str:
        s = self.settings
        calib = self.calib_text.fingerprint if self.calib_text else "same"
        rungs = ",".join(str(t) for t in s.ladder_tokens)
        # Disjoint rungs move the calibration windows; nested ones keep the key they always had.
        layout = "" if s.ladder_windows == "nested" else f":{s.ladder_windows}"
        return f"{self.text.fingerprint}:{calib}:{s.eval_tokens}:{s.calib_tokens}:{s.seq_len}:{rungs}{layout}"

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
                with_means=self.settings.compensation != "none",
                with_covariance=self.settings.compensation == "refit",
                covariance_cache_key=importance_cache_key(
                    self.loaded.fingerprint, self.data_fingerprint, "covariance", self.settings.calib_tokens
                ),
                about=self._importance_about(),
            )
        return self.importance

    def _importance_about(self) -> str:
        """``smollm2-135m, 16384 tokens of wikitext-2/valid.txt``: what the cached scores were computed
        on (a text file by its folder and name: WikiText-2's and PTB's ``valid.txt`` differ)."""
        spec = (self.calib_text or self.text).spec
        model = self.loaded.source.spec
        text = Path(spec)
        where = f"{text.parent.name}/{text.name}" if text.parent.name and text.name else spec
        return f"{Path(model).name or model}, {self.settings.calib_tokens} tokens of {where}"

    def with_grid(self, settings: BackendSettings) -> PruningBackend:
        """This backend with another level grid (``head_unit``, ``attn_levels``, ``mlp_levels``,
        ``mlp_multiple``): same loaded model and texts, sharing the importance scores, the dense
        reference and the extra metrics, which do not depend on the grid. Built once per grid.

        Raises EvopruneError when ``settings`` differ in anything but the grid (that needs a new backend).
        """
        if settings == self.settings:
            return self
        grid = ("head_unit", "attn_levels", "mlp_levels", "mlp_multiple")
        if replace(settings, **{k: getattr(self.settings, k) for k in grid}) != self.settings:
            raise EvopruneError("a backend can switch only its level grid: load another backend for other settings")
        if settings not in self._siblings:
            other = PruningBackend(self.loaded, self.text, settings, self.calib_text)
            other.importance, other.importance_cached = self.importance, self.importance_cached
            other._reference = self._reference
            for extra in self.extra_metrics:
                if getattr(extra, "backend", None) is self:  # e.g. a TaskEvaluator, bound to its backend
                    extra = copy.copy(extra)
                    extra.backend = other
                other.extra_metrics.append(extra)
            self._siblings[settings] = other
        return self._siblings[settings]

    def plan(self, x) -> list[LayerPlan]:
        return resolve_plan(self.space, x, self.score())

    def compensation(self, plans: list[LayerPlan]) -> list[LayerCompensation] | None:
        """What the settings' ``compensation`` gives ``plans`` (None for none), re-fits memoised."""
        layers = self._masks().layers if self._masked is not None else self.adapter.layers(self.loaded.model)
        return compensate(
            self.settings.compensation, layers, plans, self.score(), self.space.arch.head_dim, self._refits
        )

    def reference(self, n_windows: int | None = None) -> DenseReference | None:
        """The dense model's top-k log-probabilities on the first ``n_windows`` search windows
        (default: the first rung's), computed once and extended when a higher rung needs more.

        ``None`` when the dense model itself produces non-finite values: KL to it means nothing,
        and evaluations then report perplexity only.
        """
        n = len(self.eval_windows) if n_windows is None else n_windows
        have = 0 if self._reference in (None, False) else len(self._reference.indices)
        if self._reference is not False and have < n:
            self._unmask()
            more = dense_reference(
                self.loaded.model, self.search_windows[have:n], self.settings.kl_top_k, self.settings.batch_size
            )
            if not bool(torch.isfinite(more.logprobs).all()):
                self._reference = False
            elif have == 0:
                self._reference = more
            else:
                self._reference = DenseReference(
                    torch.cat([self._reference.indices, more.indices]),
                    torch.cat([self._reference.logprobs, more.logprobs]),
                )
        if not self._reference:
            return None
        return DenseReference(self._reference.indices[:n], self._reference.logprobs[:n])

    def _masks(self) -> MaskedModel:
        if self._masked is None:
            arch = self.space.arch
            self._masked = MaskedModel(self.loaded.model, self.adapter, arch.num_heads, arch.head_dim)
        return self._masked

    def _unmask(self) -> None:
        if self._masked is not None:
            self._masked.remove()
            self._masked = None

    def _text_layout(self, calib_here: bool) -> str:
        """What the evaluation text is read for, in order, with the options that set each count:
        `` (rungs: --eval-tokens 2048, --ladder 8192; calibration: ...; validation: ...)``, for the
        error a text too short for all of it gives."""
        s = self.settings
        rungs = f"rungs: --eval-tokens {s.eval_tokens}"
        if s.ladder_tokens:
            rungs += f", --ladder {','.join(map(str, s.ladder_tokens))}"
        parts = [rungs]
        if calib_here:
            parts.append(f"calibration: --calib-tokens {s.calib_tokens}")
        if s.validation_token_count:
            parts.append(f"validation: --validation-tokens {s.validation_token_count}")
        return f" ({'; '.join(parts)})"

    def windows_for(self, tokens: int) -> int:
        """How many rung windows ``tokens`` tokens take (at least one, at most all)."""
        return max(1, min(len(self.search_windows), -(-tokens // self.settings.seq_len)))

    def rung_span(self, tokens: int) -> slice:
        """The search windows a measurement of ``tokens`` tokens reads. Up to the first rung
        (``eval_tokens``; fewer screen), a prefix of its windows. A higher rung: under disjoint
        ladder windows (the default), its own windows after every lower rung's; under nested ones,
        a prefix of the search windows. Raises EvopruneError for a count that is no rung of a
        disjoint ladder."""
        s = self.settings
        if s.ladder_windows == "nested" or tokens <= s.eval_tokens:
            return slice(0, self.windows_for(tokens))
        rungs = (s.eval_tokens, *s.ladder_tokens)
        if tokens not in rungs:
            raise EvopruneError(
                f"{tokens} tokens is no rung of this run's ladder ({', '.join(map(str, rungs))}): use one of them"
            )
        counts, rung = s.rung_window_counts, rungs.index(tokens)
        start = sum(counts[:rung])
        return slice(start, start + counts[rung])

    def validation_windows(self) -> torch.Tensor:
        """The validation split: windows after the rungs and the calibration (tokenized on first use)."""
        if self._validation_windows is None:
            s = self.settings
            if not s.validation_token_count:
                raise EvopruneError("this run measures no validation split (--validation-tokens 0)")
            self._validation_windows = token_windows(
                self.loaded.tokenizer,
                self.text.text,
                s.validation_token_count,
                s.seq_len,
                skip_tokens=self.validation_skip,
                layout=self.text_layout,
            )
        return self._validation_windows

    def _validation_ref(self) -> DenseReference | None:
        if self._validation_reference is None:
            self._unmask()
            ref = dense_reference(
                self.loaded.model, self.validation_windows(), self.settings.kl_top_k, self.settings.batch_size
            )
            self._validation_reference = ref if bool(torch.isfinite(ref.logprobs).all()) else False
        return self._validation_reference or None

    def evaluate(self, x, tokens: int | None = None, split: str = "search") -> Measurement:
        """Perplexity and KL (with standard errors) of configuration ``x``, through masks.

        ``split="search"``: on the windows of the rung of ``tokens`` tokens (``rung_span``;
        ``None``: the first rung, ``eval_tokens``, which alone also runs the extra metrics such as
        task accuracies); a smaller count screens (multi-fidelity), a larger one is a higher rung
        of the ladder. ``split="validation"``: on the validation windows, disjoint from every rung
        and from calibration. Raises EvopruneError for an unknown split.
        """
        # Everything a real evaluation costs counts in its duration: the plan, the dense reference
        # (computed on the first call), the forward passes.
        start = time.perf_counter()
        plans = self.plan(x)
        if split == "validation":
            windows, reference = self.validation_windows(), self._validation_ref()
        elif split == "search":
            span = self.rung_span(self.settings.eval_tokens if tokens is None else tokens)
            windows = self.search_windows[span]
            reference = self.reference(span.stop)
            if reference is not None:
                reference = DenseReference(reference.indices[span], reference.logprobs[span])
        else:
            raise EvopruneError(f"split {split!r} is unknown: use search or validation")
        extras = self.extra_metrics if tokens is None and split == "search" else ()
        return self._measure(plans, windows, reference, extras, start)

    def evaluate_on(self, x, windows: torch.Tensor) -> Measurement:
        """Perplexity of configuration ``x`` on other token windows ((n, seq_len) ids), e.g. a
        held-out test set, pruned exactly as the search measured it (same plan, compensation)."""
        return self._measure(self.plan(x), windows, None, (), time.perf_counter())

    @contextmanager
    def applied(self, x) -> Iterator[list[LayerPlan]]:
        """The model pruned to configuration ``x`` (masks and compensation, exactly as the search
        measures and the export stores it) inside the block, dense again after it."""
        plans = self.plan(x)
        masked = self._masks()
        try:
            masked.apply(plans, self.compensation(plans))
            yield plans
        finally:
            masked.reset()

    def _measure(self, plans, windows, reference, extras, start: float) -> Measurement:
        masked = self._masks()
        try:
            masked.apply(plans, self.compensation(plans))
            metrics = quality(self.loaded.model, windows, reference, self.settings.batch_size)
            for extra in extras:
                metrics.update(extra(self))
            error = None
            if not all(math.isfinite(v) for v in metrics.values()):
                error = COLLAPSED
        except (RuntimeError, MemoryError) as exc:
            metrics, error = {}, f"{type(exc).__name__}: {exc}"
        finally:
            masked.reset()
        duration = time.perf_counter() - start
        return Measurement(metrics=metrics if error is None else {}, ok=error is None, error=error, duration_s=duration)

    def sliced_copy(self, x) -> torch.nn.Module:
        """A physically pruned copy of the model (the dense one stays untouched)."""
        plans = self.plan(x)
        self._unmask()  # hooks must not travel with the copy
        comp = self.compensation(plans)
        model = copy.deepcopy(self.loaded.model)
        return slice_model(model, self.adapter, plans, self.space.arch.head_dim, comp)


def load_backend(
    model: str,
    data: str,
    settings: BackendSettings,
    progress=None,
    space: SearchSpace | None = None,
    check: Callable[[PruningBackend], None] | None = None,
) -> PruningBackend:
    """Resolve and load model and texts, check the architecture, and score importance.

    ``space``: the level grid a run recorded (see ``PruningBackend``); default: from ``settings``.
    ``check``: called with the backend once the model is loaded and before importance is scored
    (minutes on a real model), for checks that need the search space, such as a budget's.
    Raises EvopruneError, before anything heavy happens where possible, on bad input.
    """
    progress = progress or (lambda *a, **k: None)
    settings.validate()
    source = resolve_model(model)
    text = load_text(data)
    calib = load_text(settings.calib_data) if settings.calib_data else None
    if source.kind in ("zoo", "hub"):
        progress("phase", name=f"fetching {model}")
    load_config(source)
    progress("phase", name="loading model")
    loaded = load_model(source, dtype=getattr(torch, settings.dtype))
    loaded.model.to(settings.device)
    backend = PruningBackend(loaded, text, settings, calib, space)
    if check is not None:
        check(backend)
    progress("phase", name=f"scoring importance ({settings.criterion})")
    backend.score()
    progress("phase", name="dense reference")
    backend.reference()
    return backend
