"""Write a physically pruned model that plain transformers loads, and load it back.

An export directory holds ``model.safetensors``, ``config.json`` (the base family's config plus
``evoprune_layers``, the per-layer widths, and an ``auto_map`` to ``modeling_evoprune.py``),
``modeling_evoprune.py`` (torch + transformers only), the tokenizer files and ``plan.json``.
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it anywhere;
``load_pruned(dir)`` loads it with evoprune's own copy of the modeling code and runs no file
from the directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evoprune.backend import pruned_modeling
from evoprune.backend.adapters import adapter_for
from evoprune.backend.loading import absolute_if_local
from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.backend.slicing import layer_sizes
from evoprune.errors import EvopruneError, make_output_dir, require_output_dir
from evoprune.pruned.allocation import PLAN_FILE

MODELING_FILE = "modeling_evoprune.py"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote; ``evaluation``, ``metrics`` (first rung), ``fidelity`` and
    ``validation``: the stored evaluation it is and its figures, when known."""

    path: Path
    params: int
    params_fraction: float
    layers: list[dict]
    evaluation: int | None = None
    metrics: dict | None = None
    fidelity: dict | None = None  # {"tokens", "metrics"} of the highest rung it reached
    validation: dict | None = None  # {"tokens", "metrics"} on the validation split, when measured


def check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EvopruneError(f"export target '{out}' is a file: pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EvopruneError(f"export target '{out}' exists and is not empty: choose another --out or pass --force")
    require_output_dir(out, "--out")  # a folder it cannot be made in fails here, before the model loads


def _modeling_source(base_class_name: str, base_config_name: str) -> str:
    source = Path(pruned_modeling.__file__).read_text(encoding="utf-8")
    return (
        source
        + "\n\n# Added by evoprune export: the classes transformers instantiates for this directory.\n"
        + f"from transformers import {base_class_name} as _Base  # noqa: E402\n"
        + f"from transformers import {base_config_name} as _BaseConfig  # noqa: E402\n\n"
        + "EvopruneConfig = make_pruned_config_class(_BaseConfig)\n"
        + "EvopruneForCausalLM = make_pruned_class(_Base, EvopruneConfig)\n"
    )


def _declare_export(out: Path, base_model_type: str) -> None:
    """Make ``config.json`` say what the directory is: a ``model_type`` only its own code loads.

    Every export gets this, dense or pruned in width or depth alike: under the base family's
    ``model_type`` transformers would load the dense base class without ``trust_remote_code``,
    fill removed sub-layers with random weights and only warn.
    """
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_type"] = pruned_modeling.MODEL_TYPE
    config[pruned_modeling.BASE_TYPE_KEY] = base_model_type
    config["architectures"] = ["EvopruneForCausalLM"]
    module = MODELING_FILE[:-3]
    config["auto_map"] = {
        "AutoConfig": f"{module}.EvopruneConfig",
        "AutoModelForCausalLM": f"{module}.EvopruneForCausalLM",
    }
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_pruned(
    backend: PruningBackend, x, out: str | Path, *, force: bool = False, metadata: dict | None = None
) -> ExportResult:
    """Slice configuration ``x`` out of the backend's model and write it to ``out``.

    ``x``: the configuration's levels, ``2 * num_layers`` integers, the attention level of every
    layer first, then the MLP level of every layer (0: dense; the space's ``upper``: the sub-layer
    removed), as ``Evaluation.levels`` and ``SearchSpace`` hold them. ``out``: a directory, created;
    it must be empty unless ``force``. ``metadata``: extra keys for the export's ``plan.json``.
    Returns what was written (``ExportResult``). Raises EvopruneError for levels outside the
    space or a non-empty ``out``.
    """
    out = Path(out)
    space = backend.space
    x = space.validate(np.asarray(x))
    check_target(out, force)
    plans = backend.plan(x)
    sizes = layer_sizes(plans, backend.compensation(plans))
    pruned = backend.sliced_copy(x)
    config = pruned.config
    config.evoprune_layers = sizes
    # The real count: bias compensation adds up to two hidden-size biases per layer, which the
    # search space's count (space.params) leaves out; without compensation the two are equal.
    params = sum(p.numel() for p in pruned.parameters())
    plan = {
        "levels": {"attn": x[: space.num_layers].tolist(), "mlp": x[space.num_layers :].tolist()},
        "layers": sizes,
        "params": params,
        "params_fraction": params / space.arch.dense_params(),
        "dense_params": space.arch.dense_params(),
        "source_model": absolute_if_local(backend.loaded.source.spec),  # recover's teacher, from any folder
        "model_fingerprint": backend.loaded.fingerprint,
        "data": absolute_if_local(backend.text.spec),  # the importance text: the plan alone applies it again
        "space": space.to_dict(),
        "backend": {k: v for k, v in vars(backend.settings).items()},
        **(metadata or {}),
    }
    write_export(pruned, backend.loaded.tokenizer, out, plan)
    return ExportResult(out, params, plan["params_fraction"], sizes)


def write_export(model, tokenizer, out: str | Path, plan: dict) -> None:
    """Write a physically pruned ``model`` (its config carries ``evoprune_layers`` and its base
    family's ``model_type``) as an export directory: weights, config, tokenizer,
    ``modeling_evoprune.py`` and ``plan`` as ``plan.json``. Files already in ``out`` with these
    names are replaced; ``evoprune export`` and ``evoprune recover`` both write through here.
    """
    out = Path(out)
    config = model.config
    base = adapter_for(config).base_class_name(config)
    base_model_type = config.model_type
    make_output_dir(out, "--out")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _declare_export(out, base_model_type)
    (out / MODELING_FILE).write_text(_modeling_source(base, type(config).__name__), encoding="utf-8")
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=2), encoding="utf-8")
    _usual_permissions(out)


def _usual_permissions(out: Path) -> None:
    # transformers writes the weights through a private temporary file (mode 0600): give every
    # file of the export the mode a file written by this process gets, so that others can load it.
    mask = os.umask(0)
    os.umask(mask)
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def export_from_store(
    store: str | Path,
    out: str | Path,
    pick: str = "knee",
    *,
    max_params: float | None = None,
    max_memory: str | None = None,
    max_latency_ms: float | None = None,
    run: int | None = None,
    force: bool = False,
    progress=None,
) -> ExportResult:
    """Export an evaluated configuration of a stored run (``pick``: an evaluation id, ``knee`` or
    ``best``), with the model, text and importance the run searched with.

    The budget (``max_params``, a kept fraction or a count; ``max_memory``, e.g. ``"400MB"``;
    ``max_latency_ms``), as ``plan`` takes it: ``best`` is ``plan``'s answer for it and ``knee``
    the knee of the front under it, an id must meet it. Without one, ``best`` and ``knee`` choose
    under the budget the run searched under (``evoprune.objectives.budget.pick_evaluation``).

    Raises EvopruneError on bad input (a non-empty ``out`` or one that cannot be created, an
    unknown pick, a pick over the budget, a changed model).
    """
    from evoprune.objectives.budget import pick_evaluation
    from evoprune.objectives.pareto import fidelity_of
    from evoprune.objectives.spec import Budget
    from evoprune.store import Store

    out = Path(out)
    check_target(out, force)
    with Store.open_existing(store, readonly=True) as st:
        r = st.get_run(run)
        chosen = pick_evaluation(st, r, pick, Budget(max_params, max_memory, max_latency_ms))
    backend = backend_for_run(r, progress)
    if progress:
        progress("phase", name=f"writing {out}")
    # The run that measured it: ``best`` chooses among every run of the problem.
    metadata = {
        "store": str(Path(store).resolve()),
        "run": chosen.run_id,
        "evaluation": chosen.id,
        "metrics": chosen.metrics,
    }
    result = export_pruned(backend, chosen.levels, out, force=force, metadata=metadata)
    return replace(
        result,
        evaluation=chosen.id,
        metrics=chosen.metrics,
        fidelity=fidelity_of(chosen, r),
        validation=chosen.validation,
    )


def export_config(
    model: str,
    config: str,
    out: str | Path,
    *,
    store: str | Path | None = None,
    data: str | None = None,
    settings: BackendSettings | None = None,
    dtype: str | None = None,
    force: bool = False,
    progress=None,
) -> ExportResult:
    """Export the configuration ``config`` names for ``model``: an evaluation id of ``store``, a
    plan.json (or export directory), ``levels:ATTN/MLP`` or ``uniform:R`` (``evoprune.pruned.allocation``
    resolves it, as ``evoprune evaluate --config`` does), sliced exactly as masking applies it.

    ``settings`` (importance criterion, compensation, token counts, level grid) and ``data`` (the
    importance text) apply to ``levels:`` and ``uniform:R``; without them those use the store's
    latest run of this model, else the defaults on ``data`` (default ``builtin``).

    Raises EvopruneError on bad input (a non-empty ``out``, wrong levels, a changed model).
    """
    from evoprune.pruned.allocation import matching_evaluation, resolve_allocation
    from evoprune.store import Store

    out = Path(out)
    check_target(out, force)
    st = Store.open_existing(store, readonly=True) if store is not None else None
    try:
        chosen = resolve_allocation(
            model, config, store=st, data=data, settings=settings, dtype=dtype, progress=progress
        )
        backend, levels, ev = chosen.backend, chosen.levels, chosen.evaluation
        if ev is None:
            _, eval_id = matching_evaluation(st, backend.loaded.fingerprint, backend.space.to_dict(), levels)
            ev = st.evaluation(eval_id) if eval_id is not None else None
    finally:
        if st is not None:
            st.close()
    # Where the configuration came from travels with it: a plan's origin, else the stored evaluation.
    metadata = {k: chosen.plan[k] for k in ("store", "run", "evaluation", "metrics") if k in (chosen.plan or {})}
    if ev is not None and not metadata:
        metadata = {"store": str(Path(store).resolve()), "run": ev.run_id, "evaluation": ev.id, "metrics": ev.metrics}
    metadata["config"] = config
    if progress:
        progress("phase", name=f"writing {out}")
    result = export_pruned(backend, levels, out, force=force, metadata=metadata)
    return replace(result, evaluation=metadata.get("evaluation"), metrics=metadata.get("metrics"))


def backend_for_run(run, progress=None) -> PruningBackend:
    """Reload the model, data and importance a stored run was searched with, and check they match."""
    from evoprune.backend.pruner import load_backend
    from evoprune.space import SearchSpace

    # The run's grid as recorded: its levels mean what they meant when it searched.
    space = SearchSpace.from_dict(run.space)
    backend = load_backend(run.model, run.data, BackendSettings.from_record(run.settings["backend"]), progress, space)
    if backend.loaded.fingerprint != run.model_fingerprint:
        raise EvopruneError(
            f"model '{run.model}' is not the one run {run.id} searched (its weights or config changed): "
            "export from the original model"
        )
    return backend


def read_export_config(path: str | Path):
    """An export's config as its base family's config class (``LlamaConfig``, ...), read without
    running code from ``path``; exports written before ``model_type`` ``evoprune`` read the same.

    Raises ``EvopruneError`` when ``config.json`` is missing, unreadable or not an evoprune export's.
    """
    from transformers import CONFIG_MAPPING

    file = Path(path) / "config.json"
    if not file.is_file():
        raise EvopruneError(f"'{path}' has no config.json: pass a directory written by 'evoprune export'")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvopruneError(f"could not read '{file}': {str(exc).splitlines()[0]}") from None
    if "evoprune_layers" not in raw:
        raise EvopruneError(
            f"'{path}' is not an evoprune export (config.json has no evoprune_layers): "
            "pass a directory written by 'evoprune export'"
        )
    base_type = raw.pop(pruned_modeling.BASE_TYPE_KEY, raw.get("model_type"))
    raw.pop("model_type", None)
    if base_type not in CONFIG_MAPPING:
        raise EvopruneError(f"'{file}' names base model type {base_type!r}, which this transformers does not know")
    return CONFIG_MAPPING[base_type].from_dict(raw)


def export_dtype(path: str | Path) -> str:
    """The dtype an export was searched and written in (its plan's ``backend.dtype``; float32 for
    exports without a readable plan)."""
    try:
        plan = json.loads((Path(path) / PLAN_FILE).read_text(encoding="utf-8"))
        return str(plan["backend"]["dtype"])
    except (OSError, ValueError, KeyError, TypeError):
        return "float32"


def load_pruned(path: str | Path, dtype=None):
    """Load an evoprune export with evoprune's own modeling code (no code from ``path`` runs).

    ``dtype`` (a ``torch.dtype`` or its name) defaults to the export's own (``export_dtype``), so a
    bfloat16 search's export computes as the search measured it. Returns ``(model, tokenizer)``.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer

    from evoprune.backend.loading import quiet_transformers

    quiet_transformers()
    path = Path(path)
    config = read_export_config(path)
    base = getattr(transformers, adapter_for(config).base_class_name(config))
    cls = pruned_modeling.make_pruned_class(base)
    if not isinstance(dtype, torch.dtype):
        from evoprune.backend.settings import DTYPES

        name = dtype or export_dtype(path)
        if name not in DTYPES:
            raise EvopruneError(f"dtype {name!r} is unknown: use one of {', '.join(DTYPES)}")
        dtype = getattr(torch, name)
    try:
        model = cls.from_pretrained(path, config=config, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - safetensors and shape errors become one clear line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvopruneError(
            f"could not load the weights in '{path}' ({reason}): the export is corrupt or incomplete; export it again"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(path, config=config)  # its own config.json needs the remote code
    return model.eval(), tokenizer
