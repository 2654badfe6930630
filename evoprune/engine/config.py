"""Search options from a TOML file, the command line and the store, resolved into settings.

Precedence: a flag given on the command line beats ``--config search.toml``, which beats the
defaults. The resolved ``SearchSettings`` are recorded with the run, so ``evoprune resume``
needs nothing but the store.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import tomllib

from evoprune.backend.settings import BackendSettings
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError

SEARCH_FIELDS = {f.name for f in fields(SearchSettings)} - {"backend"}
BACKEND_FIELDS = {f.name for f in fields(BackendSettings)}
# Options that are not settings of the search itself.
RUN_FIELDS = {
    "model",
    "data",
    "store",
    "executor",
    "ray_address",
    "workers",
    "gpus_per_worker",
    "task_data",
    "retry_failed",
    "as_json",
}
# CLI names that differ from the settings' field names (or, for json, the command's parameter).
ALIASES = {"importance": "criterion", "json": "as_json"}


def _field_types() -> dict[str, set[str]]:
    """Option -> the type names its settings field admits (``float | None`` -> {float, None});
    the run's switches too, so that ``json = "false"`` is refused rather than read as true."""
    out = {"as_json": {"bool"}, "retry_failed": {"bool"}}
    for cls in (SearchSettings, BackendSettings):
        for f in fields(cls):
            out[f.name] = {t.strip() for t in str(f.type).split("|")}
    return out


def _typed(path: str | Path, key: str, value, admitted: set[str]):
    """``value`` as the field's type, or one line naming the option and the type it wants."""
    if "bool" in admitted and isinstance(value, bool):
        return value
    if "int" in admitted and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in admitted and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if "int" not in admitted else value
    if "str" in admitted and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)  # e.g. ladder = 8192 or max_memory = 4e8
    wanted = " or ".join(sorted(admitted - {"None"})).replace("str", "a string").replace("int", "an integer")
    wanted = wanted.replace("float", "a number").replace("bool", "true/false")
    raise EvopruneError(f"config file '{path}': option '{key}' must be {wanted}, not {value!r}: fix its value")


def _normalise(key: str) -> str:
    key = key.replace("-", "_")
    return ALIASES.get(key, key)


def read_config(path: str | Path) -> dict:
    """The options in a TOML file, flat (a ``[backend]`` or ``[search]`` table is merged in)."""
    p = Path(path)
    if not p.is_file():
        raise EvopruneError(f"config file '{path}' does not exist: pass an existing .toml file")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EvopruneError(f"config file '{path}' is not valid TOML ({exc}): fix the syntax") from None
    flat: dict = {}
    written: dict[str, str] = {}  # errors name the key as the file spells it (``importance`` or ``criterion``)
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) and key in ("search", "backend", "run") else [(key, value)]
        for k, v in items:
            flat[_normalise(k)] = v
            written[_normalise(k)] = k
    unknown = sorted(set(flat) - SEARCH_FIELDS - BACKEND_FIELDS - RUN_FIELDS)
    if unknown:
        raise EvopruneError(
            f"config file '{path}' has unknown option {written[unknown[0]]!r}: see 'evoprune search --help'"
        )
    types = _field_types()
    return {k: _typed(path, written[k], v, types[k]) if k in types else v for k, v in flat.items()}


def merge_options(cli: dict, explicit: set[str], config: dict) -> dict:
    """CLI values where the user typed them, else the config file's, else the CLI defaults."""
    merged = {_normalise(k): v for k, v in cli.items()}
    explicit = {_normalise(k) for k in explicit}
    for key, value in config.items():
        if key not in explicit:
            merged[key] = value
    return merged


# The options that choose the level grid (``BackendSettings``).
GRID_FIELDS = ("mlp_levels", "attn_levels")


def keep_given_grid(options: dict, given: set[str]) -> dict:
    """``options`` with ``baseline_grid="given"`` when a level grid option is among ``given`` (the
    options typed on the command line or set in the config file) and ``baseline_grid`` is not: a
    grid asked for is the grid the one-shot baselines run on, even when it is the default one."""
    if options.get("baseline_grid") is None and {_normalise(k) for k in given} & set(GRID_FIELDS):
        return {**options, "baseline_grid": "given"}
    return options


def settings_from_options(options: dict) -> SearchSettings:
    search = {k: v for k, v in options.items() if k in SEARCH_FIELDS}
    backend = {k: v for k, v in options.items() if k in BACKEND_FIELDS}
    if "evals" not in search or search["evals"] is None:
        raise EvopruneError("--evals is required (on the command line or in --config)")
    return SearchSettings(**search, backend=BackendSettings(**backend))


def settings_from_run(settings: dict) -> SearchSettings:
    """Rebuild a run's resolved settings from the store."""
    search = {k: v for k, v in settings.items() if k in SEARCH_FIELDS}
    return SearchSettings(**search, backend=BackendSettings.from_record(settings["backend"]))
