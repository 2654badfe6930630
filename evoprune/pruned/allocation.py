"""What ``--config`` names, resolved once for every command that applies a configuration to a
model (``evoprune evaluate`` and ``evoprune export``):

- an evaluation id of the store (digits): the configuration of that evaluation, with the model,
  text and importance settings of its run;
- a ``plan.json`` written by ``evoprune export`` (or the export directory holding it): its levels
  and importance settings; the text importance was scored on comes from the plan, else from the
  run it was exported from when that store is still there, else from ``--data``;
- ``levels:ATTN/MLP``: one attention and one MLP level per layer, e.g. ``levels:0,1,1,0/2,2,3,0``
  for 4 layers (each list comma-separated, or one digit per layer as ``evoprune pareto`` prints
  it: ``levels:0110/2230``), or one list of ``2 x layers`` levels, attention first, as the store
  keeps them (``levels:0,1,1,0,2,2,3,0``);
- ``uniform:R``: the same share R of every sub-layer removed, rounded to the nearest level.

For ``levels:`` and ``uniform:R`` the importance settings and level grid are the ones given
(``settings``, ``data``); given none, those of the store's latest run of this model when there is
one (its levels then mean what they mean in that run's grid), else the defaults on ``--data``
(default ``builtin``).

The heads and channels a configuration removes depend on the importance scores, so a
configuration is only applied with the settings it was found with; a model whose weights differ
from the ones a run or plan recorded is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evoprune.errors import EvopruneError

# The file an export records its allocation in (``export.write_export``); ``read_plan`` reads it.
PLAN_FILE = "plan.json"
CONFIG_FORMS = (
    "an evaluation id (with --store), a plan.json, levels:ATTN/MLP (e.g. levels:0,1,1,0/2,2,3,0) or uniform:R"
)
LEVELS_PREFIX = "levels:"
UNIFORM_PREFIX = "uniform:"


@dataclass
class Allocation:
    """A configuration ready to apply: the backend that masks and slices it, and its levels.

    ``kind`` is how ``--config`` named it (``evaluation``, ``plan``, ``levels`` or ``uniform``);
    ``run`` the run it came from or whose settings it uses; ``evaluation`` the stored evaluation
    an id named; ``plan`` the plan.json read.
    """

    backend: object  # PruningBackend, importance scored
    levels: np.ndarray
    kind: str
    run: object | None = None
    evaluation: object | None = None
    plan: dict | None = None


def config_kind(config: str) -> str:
    """``evaluation``, ``uniform``, ``levels`` or ``plan``: which form ``config`` is written in."""
    if config.isdigit():
        return "evaluation"
    if config.startswith(UNIFORM_PREFIX):
        return "uniform"
    if config.startswith(LEVELS_PREFIX):
        return "levels"
    return "plan"


def read_plan(path: Path) -> dict:
    """A plan.json written by ``evoprune export``; EvopruneError when unreadable or not one."""
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


def matching_evaluation(store, fingerprint: str, space_dict: dict | None, levels) -> tuple[int | None, int | None]:
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


def latest_run_of(store, fingerprint: str):
    """The store's latest run of the model with this fingerprint, or None."""
    if store is None:
        return None
    runs = [r for r in store.runs() if r.model_fingerprint == fingerprint]
    return runs[-1] if runs else None


def uniform_levels(space, ratio: float) -> np.ndarray:
    """Share ``ratio`` of every attention and MLP sub-layer removed, rounded to the nearest level."""
    L = space.num_layers
    attn = np.full(L, int(round(ratio * space.attn_levels)))
    mlp = np.full(L, int(round(ratio * space.mlp_levels)))
    return space.validate(np.minimum(np.concatenate([attn, mlp]), space.upper))


def parse_ratio(config: str) -> float:
    """R of ``uniform:R``; EvopruneError unless a number from 0 to 1."""
    text = config.split(":", 1)[1]
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:
        raise EvopruneError(f"--config {config!r}: the ratio must be a number from 0 to 1, e.g. uniform:0.3")
    return ratio


def _level_list(config: str, text: str) -> list[int]:
    text = text.strip()
    parts = text.split(",") if "," in text else list(text)  # no comma: one digit per layer
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise EvopruneError(
            f"--config {config!r}: {text!r} is not a list of levels (whole numbers from 0): "
            "write levels:ATTN/MLP, e.g. levels:0,1,1,0/2,2,3,0"
        )
    return values


def level_lists(config: str) -> tuple[list[int], list[int] | None]:
    """The level lists of ``levels:ATTN/MLP`` (attention, MLP), or ``(all, None)`` for the flat
    form ``levels:A0,..,M0,..``. Checks the syntax only; ``parse_levels`` checks them against a space."""
    body = config[len(LEVELS_PREFIX) :]
    if body.count("/") > 1:
        raise EvopruneError(
            f"--config {config!r}: write one '/' between the attention and the MLP levels, e.g. levels:0,1,1,0/2,2,3,0"
        )
    if "/" in body:
        attn, mlp = body.split("/")
        return _level_list(config, attn), _level_list(config, mlp)
    return _level_list(config, body), None


def _levels_vector(config: str, num_layers: int) -> np.ndarray:
    """The levels ``levels:...`` lists, checked to be one attention and one MLP level per layer."""
    first, second = level_lists(config)
    L = num_layers
    if second is None:
        if len(first) != 2 * L:
            raise EvopruneError(
                f"--config {config!r} has {len(first)} levels; a model of {L} layers needs {2 * L} "
                f"({L} attention, then {L} MLP), or levels:ATTN/MLP with {L} in each"
            )
        return np.asarray(first)
    for name, values in (("attention", first), ("MLP", second)):
        if len(values) != L:
            raise EvopruneError(
                f"--config {config!r} has {len(values)} {name} levels; the model has {L} layers: give one per layer"
            )
    return np.asarray(first + second)


def parse_levels(space, config: str) -> np.ndarray:
    """The configuration ``levels:...`` names in ``space``.

    Raises EvopruneError naming the problem when the lists do not have one level per layer or a
    level is outside the space's grid.
    """
    x = _levels_vector(config, space.num_layers)
    bad = np.flatnonzero(x > space.upper)
    if bad.size:
        i, L = int(bad[0]), space.num_layers
        kind, layer = ("attention", i) if i < L else ("MLP", i - L)
        raise EvopruneError(
            f"--config {config!r}: level {x[i]} for the {kind} of layer {layer} is outside 0..{space.upper[i]} "
            f"(this grid has {space.attn_levels} attention and {space.mlp_levels} MLP levels; "
            "--mlp-levels and --mlp-multiple set the MLP's)"
        )
    return space.validate(x)


def load_model_for(model: str, store, dtype: str | None, recorded: str | None, progress):
    """Load ``model`` for applying configurations: ``(loaded, fingerprint, dtype)``.

    The dtype is ``dtype``, else ``recorded`` (the run's or plan's), else the one this model was
    searched in in ``store``, else float32. ``fingerprint`` is the weights' as a run recorded
    them (in ``recorded``'s dtype), so a model told another dtype is still checked.
    """
    import torch

    from evoprune.backend.loading import load_config, load_model, model_fingerprint, resolve_model
    from evoprune.backend.settings import DTYPES

    source = resolve_model(model)
    if source.kind in ("zoo", "hub"):
        progress("phase", name=f"fetching {model}")
    load_config(source)
    progress("phase", name=f"loading {model}")
    if recorded is None and store is not None:
        # The dense model or uniform:R next to a store: the dtype this model was searched in there,
        # so its fingerprint finds that run.
        same = [r for r in store.runs() if r.model == model]
        dtype = dtype or (same[-1].settings["backend"].get("dtype") if same else None)
    dtype = dtype or recorded or "float32"
    if dtype not in DTYPES:
        raise EvopruneError(f"--dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    loaded = load_model(source, dtype=getattr(torch, dtype))
    fingerprint = (
        loaded.fingerprint if recorded in (None, dtype) else model_fingerprint(loaded.model, getattr(torch, recorded))
    )
    return loaded, fingerprint, dtype


def _num_layers(model: str) -> int:
    """Decoder layers of ``model``, from its config alone (no weights loaded)."""
    from evoprune.backend.adapters import adapter_for
    from evoprune.backend.loading import load_config, resolve_model

    config = load_config(resolve_model(model))
    return adapter_for(config).arch_spec(config).num_layers


def resolve_allocation(
    model: str,
    config: str,
    *,
    store=None,
    data: str | None = None,
    settings=None,
    dtype: str | None = None,
    progress=None,
) -> Allocation:
    """Load ``model`` and resolve ``config`` (see the module docstring) into a scored backend and levels.

    ``store`` is an open Store or None; ``settings`` (a ``BackendSettings``: importance criterion,
    compensation, token counts, level grid) and ``data`` (the importance text) apply to
    ``levels:`` and ``uniform:R`` only, as an evaluation or plan brings the settings it was found
    with. ``dtype`` defaults to the run's or plan's, else float32.

    Raises EvopruneError, before the weights load where it can, on bad input.
    """
    from evoprune.backend.data import load_text
    from evoprune.backend.pruner import PruningBackend
    from evoprune.backend.settings import BackendSettings
    from evoprune.space import SearchSpace

    progress = progress or (lambda *a, **k: None)
    kind = config_kind(config)
    plan = run = ev = None
    if kind in ("evaluation", "plan") and settings is not None:
        raise EvopruneError(
            f"--config {config!r} brings the importance settings and level grid it was found with: "
            "options that set them apply to levels:ATTN/MLP and uniform:R only"
        )
    if kind == "evaluation":
        if store is None:
            raise EvopruneError(f"--config {config} is an evaluation id: pass the --store that holds it")
        ev = store.evaluation(int(config))
        run = store.get_run(ev.run_id)
    elif kind == "uniform":
        parse_ratio(config)
    elif kind == "levels":
        _levels_vector(config, _num_layers(model))
    else:
        path = Path(config).expanduser()
        if path.is_dir():
            path = path / PLAN_FILE
        if not path.is_file():
            raise EvopruneError(f"--config {config!r} is not an existing plan.json: use {CONFIG_FORMS}")
        plan = read_plan(path)

    recorded = (
        run.settings["backend"].get("dtype")
        if run is not None
        else plan.get("backend", {}).get("dtype")
        if plan is not None
        else None
    )
    loaded, fingerprint, dtype = load_model_for(model, store, dtype, recorded, progress)
    expected = run.model_fingerprint if run is not None else plan["model_fingerprint"] if plan is not None else None
    if expected is not None and expected != fingerprint:
        what = f"run {run.id}" if run is not None else f"plan {config!r}"
        raise EvopruneError(f"model '{model}' is not the one {what} was made with (its weights or config differ)")

    if plan is not None:
        backend_settings = BackendSettings.from_record(plan["backend"])
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
        backend_settings, text_spec = BackendSettings.from_record(run.settings["backend"]), run.data
    elif settings is not None:
        backend_settings, text_spec = settings, data or "builtin"
    else:
        run = latest_run_of(store, loaded.fingerprint) if data is None else None
        if run is not None:
            backend_settings, text_spec = BackendSettings.from_record(run.settings["backend"]), run.data
        else:
            backend_settings, text_spec = BackendSettings(), data or "builtin"
    backend_settings = replace(backend_settings, dtype=dtype)  # the masks compute in the dtype the model is in
    backend_settings.validate()
    text = load_text(text_spec)
    calib = load_text(backend_settings.calib_data) if backend_settings.calib_data else None
    # A run's or plan's grid as recorded: its levels mean what they meant when it was written.
    recorded_space = run.space if run is not None else plan["space"] if plan is not None else None
    space = SearchSpace.from_dict(recorded_space) if recorded_space is not None else None
    backend = PruningBackend(loaded, text, backend_settings, calib, space)
    space = backend.space

    if ev is not None:
        levels = space.validate(np.asarray(ev.levels))
    elif plan is not None:
        levels = space.join(plan["levels"]["attn"], plan["levels"]["mlp"])
    elif kind == "levels":
        levels = parse_levels(space, config)
    else:
        levels = uniform_levels(space, parse_ratio(config))
    progress("phase", name=f"scoring importance ({backend_settings.criterion})")
    backend.score()
    return Allocation(backend, levels, kind, run, ev, plan)
