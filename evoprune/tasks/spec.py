"""Task configurations: which file, which layout, which prompt; and the registry of shipped ones.

A task is a small YAML (or JSON) file. The shipped ones live in ``evoprune/tasks/specs/``; any
other file can be named directly. Fields:

- ``name``, ``summary``: identity and a one-line description;
- ``format``: ``arc``, ``mmlu`` or ``mc_jsonl`` (see ``evoprune.tasks.formats``);
- ``path``: the data file or directory; relative paths are relative to the spec file, or, for
  shipped specs, to the task data directory (``--task-data DIR`` or ``EVOPRUNE_TASK_DATA``);
- ``hub``: ``DATASET:CONFIG:SPLIT`` on the Hugging Face hub, read through ``datasets`` when a
  shipped spec has no task data directory (``allenai/ai2_arc:ARC-Easy:validation``);
- ``prompt``: the question as the model sees it, with ``{question}``, ``{options}`` (lines
  ``A. text``), ``{subject}``; ``strip_question`` strips the question first;
- ``choice``: a choice as scored, ``{text}`` or ``{label}`` (A, B, ...); the model scores
  ``target_delimiter + choice`` after the prompt;
- ``description``: a header before the shots and the question, with ``{subject}``;
- ``fewshot_delimiter``, ``fewshot_sampler`` (``random`` or ``first_n``), ``fewshot_by_subject``,
  ``shots`` (the default number of examples);
- ``metrics``: ``acc`` and/or ``acc_norm``;
- ``harness_task``: the lm-evaluation-harness task that asks the same way (for reference).

These are the lm-evaluation-harness's prompt fields (``description``, ``doc_to_text``,
``target_delimiter``, ``fewshot_delimiter``), so a shipped task reproduces the harness's contexts
and continuations character for character.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.hub import offline_unless_reachable
from evoprune.tasks.formats import LOADERS, Doc, hub_docs, load_docs

SPECS_DIR = Path(__file__).with_name("specs")
TASK_DATA_ENV = "EVOPRUNE_TASK_DATA"
METRICS = ("acc", "acc_norm")
SAMPLERS = ("random", "first_n")
_FIELDS = [
    "name",
    "summary",
    "format",
    "path",
    "prompt",
    "choice",
    "target_delimiter",
    "fewshot_delimiter",
    "description",
    "strip_question",
    "fewshot_sampler",
    "fewshot_by_subject",
    "shots",
    "metrics",
    "harness_task",
    "hub",
]
_PROMPT_FIELDS = {"question", "options", "subject"}
_CHOICE_FIELDS = {"text", "label"}
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class TaskSpec:
    name: str
    format: str
    path: str
    prompt: str
    choice: str = "{text}"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    strip_question: bool = False
    fewshot_sampler: str = "random"
    fewshot_by_subject: bool = False
    shots: int = 0
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    harness_task: str | None = None
    summary: str = ""
    hub: str | None = None
    # None: a shipped spec, whose relative ``path`` lies in the task data directory.
    base_dir: Path | None = field(default=None, compare=False)

    def data_path(self, override: str | Path | None = None, data_dir: Path | None = None) -> Path | None:
        """The data file to read: ``override`` when given, else the spec's own path.

        A shipped spec's relative path is looked up in ``data_dir``; without one it is None
        (the data then comes from the hub, see ``resolve_task``).
        """
        path = Path(override if override is not None else self.path).expanduser()
        if path.is_absolute() or override is not None:
            return path
        base = self.base_dir if self.base_dir is not None else data_dir
        return None if base is None else (base / path).resolve()

    def metric_names(self) -> tuple[str, ...]:
        """The keys this task adds to an evaluation's metrics: ``acc:NAME``, ``acc_norm:NAME``."""
        return tuple(f"{m}:{self.name}" for m in self.metrics)


def _check_template(template: str, allowed: set[str], what: str, source: Path) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise EvopruneError(f"task file '{source}': {what} template {template!r} is malformed ({exc})") from None
    unknown = names - allowed
    if unknown:
        raise EvopruneError(
            f"task file '{source}': {what} template uses {{{sorted(unknown)[0]}}}: use {', '.join(sorted(allowed))}"
        )


def spec_from_dict(data: dict, source: Path, base_dir: Path) -> TaskSpec:
    """A validated TaskSpec; every problem is one error naming ``source``."""
    if not isinstance(data, dict):
        raise EvopruneError(f"task file '{source}' must hold a mapping of task fields (name, format, path, prompt)")
    missing = [k for k in ("name", "format", "path", "prompt") if not isinstance(data.get(k), str)]
    if missing:
        raise EvopruneError(
            f"task file '{source}' lacks the text field {missing[0]!r}: expected name, format, path, prompt"
        )
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise EvopruneError(f"task file '{source}' has an unknown field {unknown[0]!r}: known are {', '.join(_FIELDS)}")
    values = {k: data[k] for k in _FIELDS if k in data}
    if values["format"] not in LOADERS:
        raise EvopruneError(f"task file '{source}': format {values['format']!r} is unknown: use {', '.join(LOADERS)}")
    metrics = values.get("metrics", list(METRICS))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics or not all(m in METRICS for m in metrics):
        raise EvopruneError(f"task file '{source}': metrics must be a list of {', '.join(METRICS)}, got {metrics!r}")
    values["metrics"] = tuple(metrics)
    if values.get("fewshot_sampler", "random") not in SAMPLERS:
        raise EvopruneError(f"task file '{source}': fewshot_sampler must be one of {', '.join(SAMPLERS)}")
    shots = values.get("shots", 0)
    if not isinstance(shots, int) or shots < 0:
        raise EvopruneError(f"task file '{source}': shots must be a whole number >= 0, got {shots!r}")
    _check_template(values["prompt"], _PROMPT_FIELDS, "prompt", source)
    _check_template(values.get("description", ""), {"subject"}, "description", source)
    _check_template(values.get("choice", "{text}"), _CHOICE_FIELDS, "choice", source)
    hub = values.get("hub")
    if hub is not None and (not isinstance(hub, str) or len(hub.split(":")) != 3 or not all(hub.split(":"))):
        raise EvopruneError(f"task file '{source}': hub must be DATASET:CONFIG:SPLIT, got {hub!r}")
    return TaskSpec(**values, base_dir=base_dir)


def read_spec(path: Path, base_dir: Path | None = None, *, shipped: bool = False) -> TaskSpec:
    """Read a task file (.yaml, .yml or .json).

    Relative data paths are relative to ``base_dir`` (default: the file's folder), or, when
    ``shipped``, to the task data directory given at resolution time.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvopruneError(f"could not read task file '{path}': {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - YAML and JSON parse errors become one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvopruneError(f"task file '{path}' is not valid YAML/JSON ({first})") from None
    if shipped:
        return spec_from_dict(data, path, None)
    return spec_from_dict(data, path, base_dir if base_dir is not None else path.resolve().parent)


def registry() -> dict[str, TaskSpec]:
    """The shipped tasks by name."""
    specs = [read_spec(p, shipped=True) for p in sorted(SPECS_DIR.glob("*.yaml"))]
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class TaskRef:
    """A task as named on the command line: the spec, and where its data comes from.

    ``data`` is a local file or directory, or ``hf:DATASET:CONFIG:SPLIT`` for questions read from
    the Hugging Face hub, which are then held in ``docs``.
    """

    spec: TaskSpec
    data: Path | str
    docs: tuple[Doc, ...] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def load(self) -> list[Doc]:
        """The task's questions, in data order."""
        return list(self.docs) if self.docs is not None else load_docs(self.spec.format, Path(self.data))


def task_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The task data directory: ``data_dir``, else ``$EVOPRUNE_TASK_DATA``, else None.

    Raises EvopruneError when the directory named does not exist.
    """
    if data_dir is None:
        data_dir = os.environ.get(TASK_DATA_ENV) or None
        origin = TASK_DATA_ENV
    else:
        origin = "--task-data"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise EvopruneError(f"task data directory '{path}' (from {origin}) does not exist: pass an existing folder")
    return path


def _hub_docs(spec: TaskSpec) -> tuple[Doc, ...]:
    """The questions of ``spec.hub`` read through ``datasets``; EvopruneError when the hub cannot serve them."""
    dataset, config, split = spec.hub.split(":")
    how = (
        f"connect to the Hugging Face hub, or put the {spec.format} data at '{spec.path}' in a folder and pass "
        f"--task-data DIR (or set {TASK_DATA_ENV}=DIR), or pass --tasks {spec.name}=PATH"
    )
    offline_unless_reachable()
    try:
        import datasets

        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown data set, no datasets package: one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EvopruneError(
            f"task {spec.name!r} has no local data and could not load {dataset} ({config}, {split}) from the hub "
            f"({reason}): {how}"
        ) from None
    docs = hub_docs(spec.format, rows, f"hf:{spec.hub}")
    if not docs:
        raise EvopruneError(f"task {spec.name!r}: {dataset} ({config}, {split}) on the hub has no questions: {how}")
    return tuple(docs)


def resolve_task(name: str, data_dir: str | Path | None = None) -> TaskRef:
    """``arc_easy``, ``arc_easy=PATH`` (other data, same prompt), or a task file ``my_task.yaml``.

    A shipped task reads its data from ``data_dir`` (default ``$EVOPRUNE_TASK_DATA``) when one is
    set, else from the Hugging Face hub through ``datasets``. Raises EvopruneError when the task
    is unknown or its data cannot be found, saying how to get it.
    """
    name = name.strip()
    task, _, override = name.partition("=")
    task, override = task.strip(), override.strip() or None
    if task.endswith((".yaml", ".yml", ".json")):
        path = Path(task).expanduser()
        if not path.is_file():
            raise EvopruneError(f"task file '{task}' does not exist: pass a task YAML/JSON file or a task name")
        spec = read_spec(path)
    else:
        known = registry()
        if task not in known:
            raise EvopruneError(
                f"unknown task {task!r}: use one of {', '.join(sorted(known))}, NAME=DATA_PATH, a task .yaml file, "
                "or lm_eval:NAME for a lm-evaluation-harness task (needs evoprune[tasks] and the Hugging Face hub)"
            )
        spec = known[task]
    directory = task_data_dir(data_dir) if override is None and spec.base_dir is None else None
    data = spec.data_path(override, directory)
    if data is None:
        if spec.hub is None:
            raise EvopruneError(
                f"task {spec.name!r} needs a task data directory holding '{spec.path}': pass --task-data DIR "
                f"(or set {TASK_DATA_ENV}=DIR), or --tasks {spec.name}=PATH"
            )
        return TaskRef(spec, f"hf:{spec.hub}", _hub_docs(spec))
    if not data.exists():
        if directory is not None:
            raise EvopruneError(
                f"task {spec.name!r}: data '{data}' does not exist in the task data directory '{directory}': put "
                f"the {spec.format} data there, unset {TASK_DATA_ENV} to read it from the hub, or pass "
                f"--tasks {spec.name}=PATH"
            )
        hint = f"pass --tasks {spec.name}=PATH" if override is None else "check the path"
        raise EvopruneError(
            f"task {spec.name!r}: data '{data}' does not exist ({hint} to a data file in the {spec.format} format)"
        )
    return TaskRef(spec, data)


# -- prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One scored question: the context, the choice strings and the continuations scored."""

    index: int  # position in the data file
    context: str
    choices: tuple[str, ...]  # as the harness's doc_to_choice: acc_norm divides by their length
    continuations: tuple[str, ...]  # target_delimiter + choice
    gold: int


def _subject_text(doc: Doc) -> str:
    return doc.subject.replace("_", " ")


def _choice_strings(spec: TaskSpec, doc: Doc) -> list[str]:
    return [spec.choice.format(text=t, label=LETTERS[i]) for i, t in enumerate(doc.choices)]


def render_question(spec: TaskSpec, doc: Doc) -> str:
    """The harness's ``doc_to_text``."""
    q = doc.question.strip() if spec.strip_question else doc.question
    options = "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(doc.choices))
    return spec.prompt.format(question=q, options=options, subject=_subject_text(doc))


def _shots(spec: TaskSpec, docs: list[Doc], i: int, k: int, seed: int) -> list[int]:
    """Indices of the ``k`` examples shown before question ``i``: never ``i`` itself."""
    pool = [
        j for j in range(len(docs)) if j != i and (not spec.fewshot_by_subject or docs[j].subject == docs[i].subject)
    ]
    if len(pool) < k:
        where = f" of subject {docs[i].subject!r}" if spec.fewshot_by_subject else ""
        raise EvopruneError(
            f"task {spec.name!r}: {k}-shot needs {k} other questions{where}, the data has {len(pool)}: "
            f"use --shots {len(pool)} or fewer"
        )
    if spec.fewshot_sampler == "first_n":
        return pool[:k]
    rng = np.random.default_rng([seed, i])
    return [pool[j] for j in rng.choice(len(pool), size=k, replace=False)]


def build_questions(
    ref: TaskRef, *, limit: int | None = None, shots: int | None = None, seed: int = 0
) -> list[Question]:
    """The questions to score: all of them, or a fixed random subset of ``limit`` (by ``seed``).

    The same arguments always give the same questions, prompts and shots, so every
    configuration of a search is judged on the same subset.
    """
    spec = ref.spec
    k = spec.shots if shots is None else shots
    if k < 0:
        raise EvopruneError(f"--shots must be at least 0, got {k}")
    if limit is not None and limit < 1:
        raise EvopruneError(f"--limit must be at least 1, got {limit}")
    docs = ref.load()
    chosen = range(len(docs))
    if limit is not None and limit < len(docs):
        chosen = sorted(np.random.default_rng(seed).choice(len(docs), size=limit, replace=False).tolist())
    questions = []
    for i in chosen:
        doc = docs[i]
        header = spec.description.format(subject=_subject_text(doc))
        examples = ""
        if k:
            shown = []
            for j in _shots(spec, docs, i, k, seed):
                ex = docs[j]
                shown.append(render_question(spec, ex) + spec.target_delimiter + _choice_strings(spec, ex)[ex.gold])
            examples = spec.fewshot_delimiter.join(shown) + spec.fewshot_delimiter
        choices = _choice_strings(spec, doc)
        if any(c == "" for c in choices):
            raise EvopruneError(f"task data '{ref.data}': question {i + 1} has an empty choice")
        questions.append(
            Question(
                index=i,
                context=header + examples + render_question(spec, doc),
                choices=tuple(choices),
                continuations=tuple(spec.target_delimiter + c for c in choices),
                gold=doc.gold,
            )
        )
    return questions
