"""What decides a search: ``SearchSettings`` (validated before anything loads), the inner-search
algorithms, the progress callback type every long call takes and its default (``log_progress``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from evoprune.backend.settings import BackendSettings
from evoprune.engine.acquisition import ACQUISITIONS
from evoprune.engine.registry import STRATEGIES
from evoprune.errors import EvopruneError, option_text
from evoprune.objectives.spec import Budget, Objectives
from surrogates import check_surrogate, first_line, parse_surrogate_spec, plugin_entry_point

ProgressFn = Callable[..., None]

ALGORITHMS = ("nsga2", "nsga3", "agemoea", "smsemoa")
BASELINE_GRIDS = (None, "fine", "given")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides which configurations a search evaluates (``evals`` only bounds it).

    The fields are the ``evoprune search`` options of the same names (``--help`` gives each):

    - ``evals``: real evaluations in all, the initial design included; ``seed``: every random choice.
    - ``method``: ``evoprune`` or a baseline (``evoprune.engine.registry.STRATEGIES``).
    - ``objectives``: comma-separated, a quality (``ppl``, ``kl``, ``acc:TASK``) then costs
      (``params``, ``flops``, ``memory``, ``latency``).
    - Budget (``budget``): ``max_params``, a kept fraction in (0, 1] or a parameter count (an
      integer of at least 1000); ``max_memory``, a size string (``"400MB"``, ``"1.5GiB"``: weights
      and the KV cache at 2048 tokens); ``max_latency_ms``, milliseconds of a 256-token forward on
      this machine. ``min_params``: the smallest kept fraction searched, in [0, 1).
    - Search: ``init`` (initial design size), ``batch`` (evaluations per round), ``surrogate``
      (``NAME`` or ``NAME:key=value,...``), ``acquisition``, ``algorithm`` (pymoo), ``pop_size`` and
      ``generations`` (of the inner search on the surrogate), ``refine``, ``focus`` (the band under
      the budget, a fraction of the dense parameters), ``local_share``, ``screen_tokens`` and
      ``screen_factor`` (multi-fidelity screening), ``warm_start``, ``max_ppl_ratio``, ``task_limit``
      (questions per task for ``acc:`` objectives).
    - One-shot baselines: ``baseline_skip_first`` / ``baseline_skip_last`` (``uniform``'s dense
      layers), ``baseline_grid`` (their level grid: ``fine``, one MLP channel and one attention
      unit a level; ``given``, the backend's; None: ``fine`` when the backend's grid is the default
      one, see ``evoprune.engine.baselines.one_shot.method_settings``).
    - ``backend``: what a real evaluation is (``BackendSettings``: tokens, criterion, compensation,
      level grid, device).

    ``validate()`` raises EvopruneError naming the option for a value that cannot be meant.
    """

    evals: int
    seed: int = 0
    method: str = "evoprune"
    objectives: str = "ppl,params"
    max_params: float | None = None
    max_memory: str | None = None
    max_latency_ms: float | None = None
    min_params: float = 0.5
    init: int = 8
    batch: int = 4
    surrogate: str = "additive"
    acquisition: str = "uncertainty"
    algorithm: str = "nsga2"
    pop_size: int = 64
    generations: int = 40
    refine: bool = True
    focus: float = 0.05
    local_share: float = 0.5  # under a budget: share of each batch spent on level swaps around the best
    screen_tokens: int = 0
    screen_factor: int = 3
    warm_start: bool = True
    max_ppl_ratio: float = 20.0
    task_limit: int = 100
    baseline_skip_first: int | None = None  # uniform baseline: layers left dense; None: LLM-Pruner's 4 of 32, scaled
    baseline_skip_last: int | None = None  # the same at the end (LLM-Pruner: 2 of 32)
    baseline_grid: str | None = None  # one-shot baselines' level grid: fine, given; None: fine on the default grid
    backend: BackendSettings = field(default_factory=BackendSettings)

    @property
    def budget(self) -> Budget:
        return Budget(self.max_params, self.max_memory, self.max_latency_ms, self.min_params)

    def validate(self) -> None:
        for name in ("evals", "init", "batch", "pop_size", "generations"):
            if getattr(self, name) < 1:
                option = option_text(name, config_only=("pop_size", "generations"))
                raise EvopruneError(f"{option} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_params < 1:
            raise EvopruneError(f"--min-params must be in [0, 1), got {self.min_params}")
        self.budget.check()
        if self.screen_tokens < 0 or (self.screen_tokens and self.screen_tokens >= self.backend.eval_tokens):
            raise EvopruneError(
                f"--screen-tokens must be 0 (off) or below --eval-tokens {self.backend.eval_tokens}, "
                f"got {self.screen_tokens}"
            )
        if self.screen_factor < 2:
            raise EvopruneError(f"--screen-factor must be at least 2, got {self.screen_factor}")
        if self.screen_tokens and Objectives.parse(self.objectives).quality[0] not in ("ppl", "kl"):
            raise EvopruneError("--screen-tokens screens on perplexity or KL: put ppl or kl first in --objectives")
        if not 0 <= self.local_share <= 1:
            raise EvopruneError(f"--local-share must be in [0, 1], got {self.local_share}")
        if not 0 <= self.focus < 1:
            raise EvopruneError(f"--focus must be in [0, 1), got {self.focus}")
        for name in ("baseline_skip_first", "baseline_skip_last"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise EvopruneError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.baseline_grid not in BASELINE_GRIDS:
            raise EvopruneError(f"--baseline-grid must be fine or given, got {self.baseline_grid!r}")
        if self.baseline_grid == "fine" and (
            self.max_latency_ms is not None or "latency" in Objectives.parse(self.objectives).names
        ):
            raise EvopruneError(
                "--baseline-grid fine cannot be timed: the latency table is measured per level of the given grid; "
                "use --baseline-grid given with a latency objective or budget"
            )
        if self.max_ppl_ratio <= 1:
            raise EvopruneError(f"--max-ppl-ratio must be above 1, got {self.max_ppl_ratio}")
        if self.method not in STRATEGIES:
            raise EvopruneError(f"method {self.method!r} is unknown: use one of {', '.join(STRATEGIES)}")
        try:
            name, options = parse_surrogate_spec(self.surrogate)
            # Built exactly as the search builds it, and test-fitted on synthetic data where it could
            # break the contract (a plugin) or a bad option value shows only at fit time: found out
            # now, not after the initial design's evaluations. Built-ins keep the contract
            # (tests/test_surrogate_conformance.py) and some take seconds to fit.
            fit = bool(options) or plugin_entry_point(name) is not None
            check_surrogate(self.surrogate, random_state=self.seed, fit=fit)
        except (ValueError, TypeError) as exc:
            raise EvopruneError(first_line(exc)) from None
        if self.acquisition not in ACQUISITIONS:
            raise EvopruneError(f"acquisition {self.acquisition!r} is unknown: use one of {', '.join(ACQUISITIONS)}")
        if self.algorithm not in ALGORITHMS:
            raise EvopruneError(f"algorithm {self.algorithm!r} is unknown: use one of {', '.join(ALGORITHMS)}")
        Objectives.parse(self.objectives)
        self.backend.validate()

    def identity(self) -> dict:
        """The settings that define a run (a larger ``evals`` continues the same run)."""
        d = asdict(self)
        d.pop("evals")
        if d["local_share"] == 0:  # runs recorded before local moves existed searched without them
            d.pop("local_share")
        # What it decides is in the backend's grid, which ``search`` sets from it (``method_settings``)
        # before the run is looked up: a method it does not concern keeps one identity.
        d.pop("baseline_grid")
        for name in ("baseline_skip_first", "baseline_skip_last"):
            if d[name] is None:  # unset: runs recorded before these options existed keep their identity
                d.pop(name)
        d["backend"] = self.backend.identity()
        return d


_log = logging.getLogger("evoprune")


def log_progress(event: str, **info) -> None:
    """The progress callback every long call takes when given none: its events as records of the
    ``evoprune`` logger, shown once the caller configures logging (in a notebook,
    ``logging.basicConfig(level=logging.INFO)``). INFO: phases, notes, finished evaluations,
    training steps every tenth, why a method stopped; DEBUG: the rest."""
    if event == "phase":
        _log.info("%s", info.get("name", ""))
    elif event == "note":
        _log.info("note: %s", info.get("text", ""))
    elif event == "stopped":
        _log.info("stopped: %s", info.get("reason", ""))
    elif event == "eval_done" and "evaluation" in info:
        e = info["evaluation"]
        if e.status == "ok":
            _log.info("evaluation %d: %.1f%% params, ppl %.2f", e.id, 100 * e.params_fraction, e.metrics["ppl"])
        else:
            _log.info("evaluation %d failed: %s", e.id, e.error)
    elif event == "fidelity_done":
        what = "validation" if info.get("split") == "validation" else f"{info.get('tokens')} tokens"
        ppl = (info.get("metrics") or {}).get("ppl")
        _log.info("evaluation %s on %s: %s", info.get("eval_id"), what, f"ppl {ppl:.2f}" if ppl else info.get("error"))
    elif event == "step" and (info.get("step", 0) % 10 == 0 or info.get("step") == info.get("total")):
        _log.info("step %s/%s: loss %.4f", info.get("step"), info.get("total"), info.get("running_loss", math.nan))
    else:
        _log.debug("%s %s", event, {k: v for k, v in info.items() if k != "evaluation"})
