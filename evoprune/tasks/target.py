"""What ``evoprune evaluate`` scores: a dense model, an export, or a configuration through masks.

``--model`` is an export directory (loaded with ``load_pruned``) or a model spec. With a model
spec, ``--config`` picks a configuration, applied through the masks of a ``PruningBackend``:

- an evaluation id of the store (the configuration of that evaluation, with the model, text and
  importance settings of its run);
- a ``plan.json`` written by ``evoprune export`` (or the export directory holding it): its levels
  and importance settings; the text importance was scored on comes from the plan, else from the
  run it was exported from when that store is still there, else from ``--data``;
- ``uniform:R``: the same share R of every sub-layer removed, rounded to the nearest level; the
  importance settings of the store's latest run of this model when there is one, else ``--data``
  (default ``builtin``) with the default settings.

The heads and channels a configuration removes depend on the importance scores, so a
configuration is only applied with the settings it was found with; a model whose weights differ
from the ones a run or plan recorded is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.export import PLAN_FILE


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


def _settings(raw: dict):
    from evoprune.backend.pruner import BackendSettings

    return BackendSettings.from_record(raw)


def _read_plan(path: Path) -> dict:
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvopruneError(
            f"could not read plan '{path}' ({exc}): pass a plan.json written by 'evoprune export'"
        ) from None
    if not isinstance(plan, dict) or not {"levels", "backend", "model_fingerprint", "space"} <= set(plan):
        raise EvopruneError(
            f"'{path}' is not a plan.json written by 'evoprune export' (levels, backend, space missing)"
        )
    return plan


def _matching_evaluation(store, fingerprint: str, space_dict: dict | None, levels) -> tuple[int | None, int | None]:
    """(run id, evaluation id) of the latest run of this model holding this configuration."""
    from evoprune.space import SearchSpace

    if store is None:
        return None, None
    for run in reversed(store.runs()):
        if run.model_fingerprint != fingerprint or (space_dict is not None and run.space != space_dict):
            continue
        key = SearchSpace.from_dict(run.space).key(levels)
        for ev in store.evaluations(run.id):
            if ev.config_key == key:
                return run.id, ev.id
    return None, None


def _latest_run_of(store, fingerprint: str):
    if store is None:
        return None
    runs = [r for r in store.runs() if r.model_fingerprint == fingerprint]
    return runs[-1] if runs else None


def open_export(path: str, store=None, dtype: str | None = None) -> Target:
    from evoprune.export import load_pruned
    from evoprune.space import SearchSpace

    model, tokenizer = load_pruned(path, dtype)
    plan = _read_plan(Path(path).expanduser() / PLAN_FILE)
    space = SearchSpace.from_dict(plan["space"])
    levels = space.join(plan["levels"]["attn"], plan["levels"]["mlp"])
    run_id, eval_id = _matching_evaluation(store, plan["model_fingerprint"], plan["space"], levels)
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


def uniform_levels(space, ratio: float) -> np.ndarray:
    """Share ``ratio`` of every attention and MLP sub-layer removed, rounded to the nearest level."""
    L = space.num_layers
    attn = np.full(L, int(round(ratio * space.attn_levels)))
    mlp = np.full(L, int(round(ratio * space.mlp_levels)))
    return space.validate(np.minimum(np.concatenate([attn, mlp]), space.upper))


def _parse_ratio(config: str) -> float:
    text = config.split(":", 1)[1]
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:
        raise EvopruneError(f"--config {config!r}: the ratio must be a number from 0 to 1, e.g. uniform:0.3")
    return ratio


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
    import torch

    from evoprune.backend.data import load_text
    from evoprune.backend.loading import load_config, load_model, model_fingerprint, resolve_model
    from evoprune.backend.pruner import DTYPES, PruningBackend
    from evoprune.space import SearchSpace

    progress = progress or (lambda *a, **k: None)
    if is_export(model):
        if config is not None:
            raise EvopruneError(f"'{model}' is an export (already pruned): --config applies to a base model only")
        progress("phase", name=f"loading {model}")
        return open_export(model, store, dtype)

    # Decide where levels and settings come from before loading anything heavy.
    plan = run = ev = None
    if config is not None:
        if config.isdigit():
            if store is None:
                raise EvopruneError(f"--config {config} is an evaluation id: pass the --store that holds it")
            ev = store.evaluation(int(config))
            run = store.get_run(ev.run_id)
        elif config.startswith("uniform:"):
            _parse_ratio(config)
        else:
            path = Path(config).expanduser()
            if path.is_dir():
                path = path / PLAN_FILE
            if not path.is_file():
                raise EvopruneError(
                    f"--config {config!r} is neither an evaluation id, uniform:R, nor an existing plan.json"
                )
            plan = _read_plan(path)

    source = resolve_model(model)
    if source.kind in ("zoo", "hub"):
        progress("phase", name=f"fetching {model}")
    load_config(source)
    progress("phase", name=f"loading {model}")
    recorded = (
        run.settings["backend"].get("dtype")
        if run is not None
        else plan.get("backend", {}).get("dtype")
        if plan is not None
        else None
    )
    if recorded is None and store is not None:
        # The dense model or uniform:R next to a store: the dtype this model was searched in there,
        # so its fingerprint finds that run.
        same = [r for r in store.runs() if r.model == model]
        dtype = dtype or (same[-1].settings["backend"].get("dtype") if same else None)
    dtype = dtype or recorded or "float32"
    if dtype not in DTYPES:
        raise EvopruneError(f"--dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    loaded = load_model(source, dtype=getattr(torch, dtype))
    # Told another dtype than the run's: check the weights as the run loaded them.
    fingerprint = (
        loaded.fingerprint if recorded in (None, dtype) else model_fingerprint(loaded.model, getattr(torch, recorded))
    )
    dense_params = sum(p.numel() for p in loaded.model.parameters())
    if config is None:
        target = Target(f"{model} (dense)", "dense", loaded.model, loaded.tokenizer, dense_params, 1.0)
        run = _latest_run_of(store, loaded.fingerprint)
        if run is not None:
            target.levels = [0] * SearchSpace.from_dict(run.space).n_var
            target.config_key = SearchSpace.from_dict(run.space).key(target.levels)
            target.run_id, target.eval_id = _matching_evaluation(store, loaded.fingerprint, run.space, target.levels)
        return target

    expected = run.model_fingerprint if run is not None else plan["model_fingerprint"] if plan is not None else None
    if expected is not None and expected != fingerprint:
        what = f"run {run.id}" if run is not None else f"plan {config!r}"
        raise EvopruneError(f"model '{model}' is not the one {what} was made with (its weights or config differ)")

    if plan is not None:
        settings = _settings(plan["backend"])
        text_spec = plan.get("data") or data
        if text_spec is None and plan.get("store") and Path(plan["store"]).is_file():
            from evoprune.store import Store

            with Store.open_existing(plan["store"], readonly=True) as origin:
                text_spec = origin.get_run(plan.get("run")).data
        if text_spec is None:
            raise EvopruneError(
                f"plan {config!r} does not record the text its importance was scored on: pass it with --data"
            )
    elif run is not None:
        settings, text_spec = _settings(run.settings["backend"]), run.data
    else:
        run = _latest_run_of(store, loaded.fingerprint)
        if run is not None and data is None:
            settings, text_spec = _settings(run.settings["backend"]), run.data
        else:
            from evoprune.backend.pruner import BackendSettings

            run, settings, text_spec = None, BackendSettings(), data or "builtin"
    settings = replace(settings, dtype=dtype)  # the masks compute in the dtype the model is in
    settings.validate()
    text = load_text(text_spec)
    calib = load_text(settings.calib_data) if settings.calib_data else None
    backend = PruningBackend(loaded, text, settings, calib)
    space = backend.space
    if run is not None and space.to_dict() != run.space:
        raise EvopruneError(f"the search space of model '{model}' differs from run {run.id}'s: check the model")

    if ev is not None:
        levels = space.validate(np.asarray(ev.levels))
    elif plan is not None:
        if space.to_dict() != plan["space"]:
            raise EvopruneError(f"the search space of plan {config!r} differs from model '{model}''s")
        levels = space.join(plan["levels"]["attn"], plan["levels"]["mlp"])
    else:
        levels = uniform_levels(space, _parse_ratio(config))
    progress("phase", name=f"scoring importance ({settings.criterion})")
    backend.score()

    run_id, eval_id = (
        (ev.run_id, ev.id)
        if ev is not None
        else _matching_evaluation(store, loaded.fingerprint, space.to_dict(), levels)
    )
    return Target(
        label=f"{model} with --config {config}",
        source="masks",
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        params=space.params(levels),
        params_fraction=space.params_fraction(levels),
        backend=backend,
        levels=levels.tolist(),
        run_id=run_id,
        eval_id=eval_id,
        config_key=space.key(levels),
    )
