"""Task configurations: which file, which layout, which prompt; and the registry of shipped ones.

A task is a small YAML (or JSON) file. The shipped ones live in ``evoprune/tasks/specs/``; any
other file can be named directly. Fields:

- ``name``, ``summary``: identity and a one-line description;
- ``format``: ``arc``, ``mmlu`` or ``mc_jsonl`` (see ``evoprune.tasks.formats``);
- ``path``: the default data file or directory; relative paths are relative to the project root
  (the directory holding the ``evoprune`` package), for shipped specs, or to the spec file;
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
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoprune.errors import EvopruneError
from evoprune.tasks.formats import LOADERS, Doc, load_docs

SPECS_DIR = Path(__file__).with_name("specs")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
    base_dir: Path = field(default=PROJECT_ROOT, compare=False)

    def data_path(self, override: str | Path | None = None) -> Path:
        """The data file to read: ``override`` when given, else the spec's own path."""
        path = Path(override if override is not None else self.path).expanduser()
        return path if path.is_absolute() or override is not None else (self.base_dir / path).resolve()

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
    return TaskSpec(**values, base_dir=base_dir)


def read_spec(path: Path, base_dir: Path | None = None) -> TaskSpec:
    """Read a task file (.yaml, .yml or .json)."""
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
    return spec_from_dict(data, path, base_dir if base_dir is not None else path.resolve().parent)


def registry() -> dict[str, TaskSpec]:
    """The shipped tasks by name."""
    specs = [read_spec(p, PROJECT_ROOT) for p in sorted(SPECS_DIR.glob("*.yaml"))]
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class TaskRef:
    """A task as named on the command line: the spec, and where its data comes from."""

    spec: TaskSpec
    data: Path

    @property
    def name(self) -> str:
        return self.spec.name


def resolve_task(name: str) -> TaskRef:
    """``arc_easy``, ``arc_easy=PATH`` (other data, same prompt), or a task file ``my_task.yaml``."""
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
    data = spec.data_path(override)
    if not data.exists():
        hint = f"pass --tasks {spec.name}=PATH" if override is None else "check the path"
        raise EvopruneError(f"task {spec.name!r}: data '{data}' does not exist ({hint} to a {spec.format} data file)")
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
    docs = load_docs(spec.format, ref.data)
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
