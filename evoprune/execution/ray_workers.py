"""The worker side of ``--executor ray``: the actor that loads one backend and evaluates
configurations (``_EvalWorker``), the driver's view of it (``RayWorker``), what it inherits from
the driver (``FORWARDED_ENV``, paths made absolute), how much memory it reserves
(``worker_memory_estimate``), and its errors as one line. Needs no Ray to import.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from evoprune.backend.pruner import Measurement, PruningBackend
from evoprune.errors import EvopruneError
from evoprune.execution.executors import (
    BackendRecipe,
    Job,
)

_DEATH_FIELD = re.compile(r"^(class_name|actor_id|pid|name|namespace|ip):")


# Variables that decide where workers find the model, the importance cache and hub files. A
# cluster's workers inherit the environment of `ray start`, not the driver's, so they are passed on.
FORWARDED_ENV = (
    "EVOPRUNE_CACHE_DIR",
    "EVOPRUNE_TASK_DATA",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)


def _one_line(exc: BaseException) -> str:
    """A Ray error as one line: the original exception of a raising task, the reason of a death."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _one_line(cause)
    # An actor's death notice lists its ids, pid and address one per line; keep the sentences.
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not _DEATH_FIELD.match(line)]
    return f"{type(exc).__name__}: {' '.join(lines[:3])}"[:400]


class _EvalWorker:
    """The actor: one loaded backend that evaluates configurations."""

    def __init__(self, recipe: BackendRecipe, data_fingerprint: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "threads": threads, "error": None}
        self.backend: PruningBackend | None = None
        start = time.perf_counter()
        try:
            backend = recipe.load()
            if backend.data_fingerprint != data_fingerprint:
                raise EvopruneError(f"worker read different text than the driver for --data '{recipe.data}'")
            self.backend = backend
            self.info["importance_cached"] = backend.importance_cached
        except Exception as exc:  # noqa: BLE001 - any load failure goes to the driver as one line via ready()
            self.info["error"] = f"could not load the model: {type(exc).__name__}: {exc}".splitlines()[0]
        self.info["load_s"] = time.perf_counter() - start

    def ready(self) -> dict:
        return self.info

    def evaluate(self, levels: tuple[int, ...], tokens: int | None = None, split: str = "search") -> Measurement:
        if self.backend is None:
            raise RuntimeError(self.info["error"])
        return self.backend.evaluate(np.array(levels), tokens, split)


@dataclass
class RayWorker:
    """The driver's view of one actor."""

    name: str
    handle: object
    ready: bool = False
    job: tuple[Job, int] | None = None  # the job it holds and which attempt that is
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if "host" in self.info:
            return f"{self.name} ({self.info['host']}, pid {self.info['pid']})"
        return self.name


def worker_memory_estimate(backend: PruningBackend) -> int:
    """Bytes one worker needs: the weights, a few copies of one batch's logits, and the interpreter
    with torch and transformers loaded (about 0.5 GiB)."""
    model = backend.loaded.model
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    s = backend.settings
    logits = 3 * s.batch_size * s.seq_len * model.config.vocab_size * 4
    return int(1.2 * weights + logits + 2**29)
