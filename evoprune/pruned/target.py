"""What ``evoprune evaluate`` scores: a dense model, an export, or a configuration through masks.

``--model`` is an export directory (loaded with ``load_pruned``) or a model spec. With a model
spec, ``--config`` picks a configuration (an evaluation id of the store, an export's plan.json,
``levels:ATTN/MLP`` or ``uniform:R``; ``evoprune.pruned.allocation`` resolves it, as for ``evoprune
export``), applied through the masks of a ``PruningBackend``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.pruned.allocation import (
    PLAN_FILE,
    latest_run_of,
    load_model_for,
    matching_evaluation,
    read_plan,
    resolve_allocation,
)


@dataclass
class Target:
    """A model ready to score, and which configuration (and stored pair) it is."""

    label: str
    source: str  # "dense" | "masks" | "export"
    model: object
    tokenizer: object
    params: int
    params_fraction: float | None = None
    backend: object | None = None  # PruningBackend, when a configuration is applied through masks
    levels: list[int] | None = None
    run_id: int | None = None
    eval_id: int | None = None
    config_key: str | None = None

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model with this target's configuration in effect (masks applied, then reset)."""
        if self.backend is None:
            yield
            return
        with self.backend.applied(np.asarray(self.levels)):
            yield


def is_export(spec: str) -> bool:
    path = Path(spec).expanduser()
    if not (path.is_dir() and (path / PLAN_FILE).is_file() and (path / "config.json").is_file()):
        return False
    try:
        return "evoprune_layers" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def open_export(path: str, store=None, dtype: str | None = None) -> Target:
    from evoprune.pruned.export import load_pruned
    from evoprune.space import SearchSpace

    model, tokenizer = load_pruned(path, dtype)
    plan = read_plan(Path(path).expanduser() / PLAN_FILE)
    space = SearchSpace.from_dict(plan["space"])
    levels = space.join(plan["levels"]["attn"], plan["levels"]["mlp"])
    run_id, eval_id = matching_evaluation(store, plan["model_fingerprint"], plan["space"], levels)
    return Target(
        label=f"export {path}",
        source="export",
        model=model,
        tokenizer=tokenizer,
        params=sum(p.numel() for p in model.parameters()),
        params_fraction=plan.get("params_fraction"),
        levels=levels.tolist(),
        run_id=run_id,
        eval_id=eval_id,
        config_key=space.key(levels),
    )


def open_target(
    model: str,
    config: str | None = None,
    store=None,
    data: str | None = None,
    progress=None,
    dtype: str | None = None,
) -> Target:
    """Load what ``--model``/``--config`` name (``store`` is an open Store or None).

    ``dtype`` (float32, bfloat16, float16) defaults to that of the run, plan or export named, else
    float32: a run's model is measured in the dtype it was searched in.
    """
    from evoprune.space import SearchSpace

    progress = progress or (lambda *a, **k: None)
    if is_export(model):
        if config is not None:
            raise EvopruneError(f"'{model}' is an export (already pruned): --config applies to a base model only")
        progress("phase", name=f"loading {model}")
        return open_export(model, store, dtype)

    if config is None:
        loaded, _, _ = load_model_for(model, store, dtype, None, progress)
        dense_params = sum(p.numel() for p in loaded.model.parameters())
        target = Target(f"{model} (dense)", "dense", loaded.model, loaded.tokenizer, dense_params, 1.0)
        run = latest_run_of(store, loaded.fingerprint)
        if run is not None:
            target.levels = [0] * SearchSpace.from_dict(run.space).n_var
            target.config_key = SearchSpace.from_dict(run.space).key(target.levels)
            target.run_id, target.eval_id = matching_evaluation(store, loaded.fingerprint, run.space, target.levels)
        return target

    chosen = resolve_allocation(model, config, store=store, data=data, dtype=dtype, progress=progress)
    backend, levels, ev = chosen.backend, chosen.levels, chosen.evaluation
    space = backend.space
    run_id, eval_id = (
        (ev.run_id, ev.id)
        if ev is not None
        else matching_evaluation(store, backend.loaded.fingerprint, space.to_dict(), levels)
    )
    return Target(
        label=f"{model} with --config {config}",
        source="masks",
        model=backend.loaded.model,
        tokenizer=backend.loaded.tokenizer,
        params=space.params(levels),
        params_fraction=space.params_fraction(levels),
        backend=backend,
        levels=levels.tolist(),
        run_id=run_id,
        eval_id=eval_id,
        config_key=space.key(levels),
    )
