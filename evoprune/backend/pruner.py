"""The backend facade the engine talks to: one loaded model, scored once, evaluated many times."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from evoprune.backend.adapters import adapter_for
from evoprune.backend.data import TextSource, load_text, token_windows
from evoprune.backend.evaluate import DenseReference, dense_reference, quality
from evoprune.backend.importance import CRITERIA, Importance, compute_importance, importance_cache_key
from evoprune.backend.loading import LoadedModel, load_config, load_model, resolve_model
from evoprune.backend.masking import MaskedModel
from evoprune.backend.plan import LayerPlan, resolve_plan
from evoprune.backend.slicing import slice_model
from evoprune.errors import EvopruneError
from evoprune.space import SearchSpace


@dataclass(frozen=True)
class BackendSettings:
    """How configurations are scored, measured and encoded.

    ``calib_data`` is the text importance is scored on; ``None`` uses the evaluation text,
    with windows that do not overlap the evaluation windows.
    """

    criterion: str = "wanda"
    eval_tokens: int = 1024
    calib_tokens: int = 2048
    seq_len: int = 256
    batch_size: int = 4
    head_unit: str = "query_head"
    attn_levels: int = 0
    mlp_levels: int = 8
    mlp_multiple: int = 1
    calib_data: str | None = None
    kl_top_k: int = 32
    dtype: str = "float32"
    device: str = "cpu"  # where evaluation runs; not part of what a run measured (see identity())

    def identity(self) -> dict:
        """The settings that decide the measurements: a run continues on another device."""
        d = asdict(self)
        d.pop("device")
        return d

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise EvopruneError(f"--dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        check_device(self.device)
        for name in ("eval_tokens", "calib_tokens", "seq_len", "batch_size", "kl_top_k"):
            if getattr(self, name) < 1:
                raise EvopruneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.eval_tokens < self.seq_len or self.calib_tokens < self.seq_len:
            raise EvopruneError(f"token counts must be at least one window of --seq-len {self.seq_len} tokens")
        if self.criterion not in CRITERIA:
            raise EvopruneError(f"importance criterion {self.criterion!r} is unknown: use one of {', '.join(CRITERIA)}")


DTYPES = ("float32", "bfloat16", "float16")


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use, with the fix, before anything is loaded."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EvopruneError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = "with" if torch.version.cuda else "without"
        raise EvopruneError(
            f"--device {device}: no CUDA device is visible (this torch {torch.__version__} was built {built} "
            "CUDA): use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EvopruneError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise EvopruneError(f"--device {device}: MPS is not available on this machine: use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise EvopruneError(f"--device {device!r} is not supported: use cpu, cuda, cuda:N or mps")


@dataclass
class Measurement:
    """What one real evaluation produced."""

    metrics: dict
    ok: bool
    error: str | None
    duration_s: float


class PruningBackend:
    """Give it a loaded model and text; it scores, masks, evaluates and slices."""

    def __init__(
        self,
        loaded: LoadedModel,
        text: TextSource,
        settings: BackendSettings,
        calib_text: TextSource | None = None,
    ):
        self.loaded = loaded
        self.text = text
        self.calib_text = calib_text
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
        tok = loaded.tokenizer
        self.eval_windows = token_windows(tok, text.text, settings.eval_tokens, settings.seq_len)
        if calib_text is None:
            # Calibration windows come right after the evaluation windows, so importance is
            # never scored on the tokens that judge the result.
            self.calib_windows = token_windows(
                tok, text.text, settings.calib_tokens, settings.seq_len, skip_tokens=settings.eval_tokens
            )
        else:
            self.calib_windows = token_windows(tok, calib_text.text, settings.calib_tokens, settings.seq_len)
        self.importance: Importance | None = None
        self.importance_cached = False
        self._reference: DenseReference | bool | None = None
        self._masked: MaskedModel | None = None
        # Called by evaluate() while the configuration is applied; each returns more metrics
        # (e.g. evoprune.tasks.TaskEvaluator: {"acc:arc_easy": ...}).
        self.extra_metrics: list[Callable[[PruningBackend], dict[str, float]]] = []
        self._siblings: dict[BackendSettings, PruningBackend] = {}

    @property
    def data_fingerprint(self) -> str:
        s = self.settings
        calib = self.calib_text.fingerprint if self.calib_text else "same"
        return f"{self.text.fingerprint}:{calib}:{s.eval_tokens}:{s.calib_tokens}:{s.seq_len}"

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

    def reference(self) -> DenseReference | None:
        """The dense model's top-k log-probabilities on the evaluation windows (computed once).

        ``None`` when the dense model itself produces non-finite values: KL to it means nothing,
        and evaluations then report perplexity only.
        """
        if self._reference is None:
            self._unmask()
            ref = dense_reference(
                self.loaded.model, self.eval_windows, self.settings.kl_top_k, self.settings.batch_size
            )
            self._reference = ref if bool(torch.isfinite(ref.logprobs).all()) else False
        return self._reference or None

    def _masks(self) -> MaskedModel:
        if self._masked is None:
            arch = self.space.arch
            self._masked = MaskedModel(self.loaded.model, self.adapter, arch.num_heads, arch.head_dim)
        return self._masked

    def _unmask(self) -> None:
        if self._masked is not None:
            self._masked.remove()
            self._masked = None

    def evaluate(self, x, tokens: int | None = None) -> Measurement:
        """Perplexity and KL of configuration ``x`` on the evaluation windows, through masks.

        ``tokens`` screens on a prefix of the windows instead (at least one window; the extra
        metrics, e.g. task accuracies, are skipped): the cheap fidelity of multi-fidelity search.
        """
        # Everything a real evaluation costs counts in its duration: the plan, the dense reference
        # (computed on the first call), the forward passes.
        start = time.perf_counter()
        plans = self.plan(x)
        reference = self.reference()
        masked = self._masks()
        windows = self.eval_windows
        if tokens is not None:
            windows = windows[: max(1, min(len(windows), -(-tokens // self.settings.seq_len)))]
        try:
            masked.apply(plans)
            metrics = quality(self.loaded.model, windows, reference, self.settings.batch_size)
            for extra in self.extra_metrics if tokens is None else ():
                metrics.update(extra(self))
            error = None
            if not all(math.isfinite(v) for v in metrics.values()):
                error = "non-finite perplexity or KL (the pruned model collapsed)"
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
        model = copy.deepcopy(self.loaded.model)
        return slice_model(model, self.adapter, plans, self.space.arch.head_dim)


def load_backend(model: str, data: str, settings: BackendSettings, progress=None) -> PruningBackend:
    """Resolve and load model and texts, check the architecture, and score importance.

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
    backend = PruningBackend(loaded, text, settings, calib)
    progress("phase", name=f"scoring importance ({settings.criterion})")
    backend.score()
    progress("phase", name="dense reference")
    backend.reference()
    return backend
