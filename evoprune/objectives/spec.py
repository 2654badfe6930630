"""Objectives and budgets: what a search minimises and what it must not exceed.

Quality objectives come from real evaluations (and their surrogates); cost objectives are exact
functions of a configuration (``evoprune.objectives.cost``). Every objective is minimised on a transformed
scale: log perplexity, log KL, negative accuracy; kept fraction of parameters or FLOPs, bytes of
memory, predicted milliseconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.objectives.cost import CostModel, LatencyTable
from evoprune.space import SearchSpace

COSTS = ("params", "flops", "memory", "latency")
QUALITIES = ("ppl", "kl")  # plus "acc:TASK" / "acc_norm:TASK"


def is_quality(name: str) -> bool:
    return name in QUALITIES or name.startswith(("acc:", "acc_norm:"))


def quality_value(name: str, metrics: dict) -> float:
    """The minimised form of a quality metric, or NaN when the evaluation lacks it."""
    if name not in metrics:
        return math.nan
    v = float(metrics[name])
    if name == "ppl":
        return math.log(v)
    if name == "kl":
        return math.log(max(v, 1e-8))
    return -v  # accuracies are maximised


def quality_se(name: str, metrics: dict) -> float:
    """Standard error of ``quality_value(name, metrics)`` (0 when not recorded, as for accuracies):
    of the mean NLL for ``ppl``, of log KL (delta method) for ``kl``."""
    if name == "ppl":
        return float(metrics.get("nll_se", 0.0))
    if name == "kl" and metrics.get("kl", 0) > 0:
        return float(metrics.get("kl_se", 0.0)) / float(metrics["kl"])
    return 0.0


def quality_from_value(name: str, value: float) -> float:
    """Back from the minimised scale to the metric (for predictions shown to users)."""
    if name == "ppl":
        return math.exp(value)
    if name == "kl":
        return math.exp(value)
    return -value


def quality_limit(name: str, best: float, ratio: float) -> float | None:
    """The worst value, on the minimised scale, still within ``ratio`` (``--max-ppl-ratio``) of
    ``best`` (also on that scale), or None where no such limit applies.

    Perplexity is a ratio scale: ``ratio`` times the best. KL is not: the dense model's KL is 0
    (floored to 1e-8), so a ratio of it would confine a search to near-dense configurations.
    A perplexity ratio ``r`` is a cross-entropy increase of ``log r`` nats/token, and KL to the
    teacher is the cross-entropy increase over the teacher's (exactly so on text drawn from it),
    so KL may exceed the best by ``log ratio`` nats. Accuracies have no such equivalent: None."""
    if name == "ppl":
        return best + math.log(ratio)
    if name == "kl":
        return math.log(math.exp(best) + math.log(ratio))
    return None


_LOG_SCALE = {"ppl": "log_ppl", "kl": "log_kl"}


def prediction_on_metric_scale(predicted: dict | None) -> dict | None:
    """A stored prediction (``{objective: value on the minimised scale, "std": its standard
    deviation}``, as the search records it before evaluating) as users read it: each objective on
    its metric's own scale, beside the surrogate's own figure and standard deviation, e.g.
    ``{"ppl": 976.1, "log_ppl": 6.884, "log_ppl_std": 0.070}`` or ``{"acc:arc_easy": 0.41,
    "acc:arc_easy_std": 0.02}``."""
    if not predicted:
        return predicted
    std = predicted.get("std")
    out = {}
    for name, value in predicted.items():
        if name == "std":
            continue
        out[name] = quality_from_value(name, float(value))
        scale = _LOG_SCALE.get(name, name)
        if scale != name:
            out[scale] = float(value)
        if std is not None:
            out[f"{scale}_std"] = float(std)
    return out


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Objectives:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if not (is_quality(n) or n in COSTS)]
        if unknown:
            raise EvopruneError(
                f"unknown objective {unknown[0]!r}: use two or three of {', '.join(QUALITIES + COSTS)}, "
                "acc:TASK or acc_norm:TASK"
            )
        if not 2 <= len(names) <= 3 or len(set(names)) != len(names):
            raise EvopruneError(f"--objectives needs two or three different names, got {text!r}")
        if not any(is_quality(n) for n in names):
            raise EvopruneError(f"--objectives {text!r} has no quality metric: add ppl, kl or acc:TASK")
        return cls(names)

    @property
    def quality(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if is_quality(n))

    @property
    def costs(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in COSTS)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


_SMALLEST_BARE_SIZE = 10**6  # a bare number below a megabyte is a size missing its unit (400 for 400MB)


def parse_size(text: str) -> int:
    """'2GB' -> 2e9 bytes, '512MiB' -> 512 * 2**20 (MB and GB are decimal, MiB and GiB binary);
    a bare number is bytes ('1e9'), refused below a megabyte, where a unit was surely forgotten."""
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise EvopruneError(f"memory budget {text!r} is not a size: write e.g. 2GB, 1.5GiB or 800MB")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise EvopruneError(f"memory budget {text!r} must be positive: write e.g. 800MB")
    if unit == "" and size < _SMALLEST_BARE_SIZE:
        raise EvopruneError(f"memory budget {text!r} has no unit and would mean {size} bytes: write e.g. {text}MB")
    return size


def size_text(size: float) -> str:
    """Bytes as ``parse_size`` reads them, to three significant digits: ``877 kB``, ``1.23 MB``, ``2.1 GB``."""
    size = float(f"{size:.3g}")  # rounded first: 999,999 bytes is 1 MB, not 1e+03 kB
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


_SMALLEST_COUNT = 1000  # a parameter count below this is a typo for a fraction (1.5, 70), not a model


def check_max_params(value: float) -> None:
    """Refuse a ``--max-params`` that is neither a kept fraction in (0, 1] nor a parameter count
    (an integer of at least 1000): EvopruneError naming both forms."""
    if not value > 0:
        raise EvopruneError(f"--max-params must be positive (a kept fraction or a count), got {value:g}")
    if not math.isfinite(value):
        raise EvopruneError(f"--max-params must be finite (a kept fraction or a count), got {value:g}")
    if value > 1 and (value != int(value) or value < _SMALLEST_COUNT):
        raise EvopruneError(
            f"--max-params {value:g} is neither a kept fraction (at most 1, e.g. 0.7) nor a parameter count "
            "(e.g. 90e6): give one of those"
        )


def params_fraction(max_params: float, dense_params: int) -> float:
    """``--max-params`` as a kept fraction of ``dense_params``: a fraction as it is, a count divided
    by the dense count. Raises EvopruneError for a value that is neither (``check_max_params``) and
    for a count above the dense model's."""
    check_max_params(max_params)
    if max_params <= 1:
        return max_params
    if max_params > dense_params:
        raise EvopruneError(
            f"--max-params {max_params:g} is more than the model's {dense_params:,} parameters: give a count at most "
            "that, or a kept fraction (e.g. 0.7)"
        )
    return max_params / dense_params


@dataclass(frozen=True)
class Budget:
    """Upper bounds on costs; ``None`` means no bound. ``min_params`` bounds the search from below."""

    max_params: float | None = None  # fraction of dense, or an absolute count when > 1
    max_memory: str | None = None
    max_latency_ms: float | None = None
    min_params: float = 0.0

    def check(self) -> None:
        """Refuse a bound that cannot be meant (EvopruneError naming the fix): ``max_params`` as
        :func:`check_max_params`, a memory size without a unit or not positive, a latency not positive."""
        if self.max_params is not None:
            check_max_params(self.max_params)
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if self.max_latency_ms is not None and not 0 < self.max_latency_ms < math.inf:
            raise EvopruneError(f"--max-latency-ms must be a positive number (ms), got {self.max_latency_ms:g}")

    def params_fraction_limit(self, dense_params: int) -> float | None:
        if self.max_params is None:
            return None
        return params_fraction(self.max_params, dense_params)


class CostEvaluator:
    """Exact costs of many configurations at once; the latency table is measured only if needed."""

    def __init__(self, space: SearchSpace, model_config, dtype: str = "float32", context: int = 2048,
                 latency_seq_len: int = 256):  # fmt: skip
        self.space = space
        self.model = CostModel(space, dtype=dtype, context=context)
        self.dtype = dtype
        self.model_config = model_config
        self.latency_seq_len = latency_seq_len
        self._latency: LatencyTable | None = None
        self.dense_params = space.arch.dense_params()
        self._dense_flops = self.model.flops_per_token(space.lower)

    def latency_table(self) -> LatencyTable:
        if self._latency is None:
            self._latency = LatencyTable.cached(
                self.model_config, self.space, seq_len=self.latency_seq_len, dtype=self.dtype
            )
        return self._latency

    def matrix(self, X: np.ndarray, names) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=int))
        cols = []
        for name in names:
            if name == "params":
                cols.append(self.space.params_matrix(X) / self.dense_params)
            elif name == "flops":
                cols.append(np.array([self.model.flops_per_token(x) for x in X]) / self._dense_flops)
            elif name == "memory":
                cols.append(np.array([self.model.cost(x).memory_bytes for x in X], dtype=float))
            elif name == "latency":
                table = self.latency_table()
                cols.append(np.array([table.predict_ms(self.space, x) for x in X]))
            else:
                raise KeyError(name)
        return np.column_stack(cols) if cols else np.zeros((len(X), 0))

    def row(self, x) -> dict:
        """Every cost of one configuration, for the store."""
        cost = self.model.cost(x)
        out = {"params": cost.params, "params_fraction": cost.params_fraction,
               "flops_fraction": cost.flops_per_token / self._dense_flops,
               "flops_per_token": cost.flops_per_token, "memory_bytes": cost.memory_bytes}  # fmt: skip
        if self._latency is not None:
            out["latency_ms"] = self._latency.predict_ms(self.space, x)
        return out

    def constraints(self, budget: Budget):
        """(names, limits) of the cost constraints a budget sets, as ``cost - limit <= 0``."""
        names, limits = [], []
        frac = budget.params_fraction_limit(self.dense_params)
        if frac is not None:
            names.append("params")
            limits.append(frac)
        if budget.max_memory is not None:
            names.append("memory")
            limits.append(parse_size(budget.max_memory))
        if budget.max_latency_ms is not None:
            names.append("latency")
            limits.append(float(budget.max_latency_ms))
        return names, np.array(limits, dtype=float)

    def check_feasible(self, budget: Budget) -> None:
        """Refuse a budget that even the smallest configuration of the space exceeds."""
        names, limits = self.constraints(budget)
        smallest = self.matrix(self.space.upper[None], names)[0] if names else []
        labels = {"params": "kept parameter fraction", "memory": "memory", "latency": "latency (ms)"}
        for name, limit, least in zip(names, limits, smallest, strict=True):
            if least > limit:
                text = (lambda v: f"{size_text(v)} ({v:.0f} bytes)") if name == "memory" else (lambda v: f"{v:.4g}")
                raise EvopruneError(
                    f"the budget is impossible: the smallest configuration of the space has {labels[name]} "
                    f"{text(least)}, above the limit {text(limit)}; raise the budget"
                )
        if budget.min_params and frac_above(budget, self.dense_params):
            raise EvopruneError(f"--min-params {budget.min_params} is above the parameter budget: lower --min-params")


def frac_above(budget: Budget, dense_params: int) -> bool:
    limit = budget.params_fraction_limit(dense_params)
    return limit is not None and budget.min_params >= limit
