"""Shared fixtures: tiny random-weight models built from a small config, and real text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evoprune.backend.data import load_text

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Importance scores are cached per test session, never in the user's home."""
    monkeypatch.setenv("EVOPRUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "evoprune-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The shipped tasks (arc_easy, mmlu) read this workspace's copy of their data, never the hub.
    monkeypatch.setenv("EVOPRUNE_TASK_DATA", str(SHARED_DATA))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def build_tokenizer():
    """A byte-level BPE tokenizer trained in a second on Python's help texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"]
    )
    tok.train_from_iterator([load_text("builtin").text[:200_000]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


TINY_CONFIGS = {
    "llama": dict(num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(num_attention_heads=4, num_key_value_heads=2),
    "llama-mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "opt": dict(num_attention_heads=4),
}


def build_tiny_model(family: str = "llama", seed: int = 0, num_layers: int = 4, vocab_size: int = 384):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = family.split("-")[0]
    sizes = (
        dict(ffn_dim=96, word_embed_proj_dim=64)
        if model_type == "opt"
        else dict(intermediate_size=96, head_dim=16, tie_word_embeddings=family == "llama")
    )
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=num_layers,
        max_position_embeddings=512,
        **sizes,
        **TINY_CONFIGS[family],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init is too tame for masking errors to show: scale weights up a little.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama saved as a plain transformers directory, loadable by path."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """Real English text for evaluation: WikiText-2 valid when present, else Python's help texts."""
    wiki = SHARED_DATA / "wikitext-2" / "valid.txt"
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    text = wiki.read_text(encoding="utf-8")[:120_000] if wiki.exists() else load_text("builtin").text[:120_000]
    path.write_text(text, encoding="utf-8")
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M behind a backend on built-in text (one per test module)."""
    from evoprune.backend.loading import ModelSource, fetch_zoo_model, load_model
    from evoprune.backend.pruner import PruningBackend
    from evoprune.backend.settings import BackendSettings

    # The converted model is large and the same for every test run: keep it in the user's cache.
    saved = os.environ.pop("EVOPRUNE_CACHE_DIR", None)
    try:
        path = fetch_zoo_model("smollm2-135m")
    finally:
        if saved is not None:
            os.environ["EVOPRUNE_CACHE_DIR"] = saved
    loaded = load_model(ModelSource("smollm2-135m", "dir", str(path)))
    return PruningBackend(loaded, load_text("builtin"), BackendSettings(eval_tokens=256, calib_tokens=512, seq_len=128))


def smollm2_mixed_config(space):
    """Every layer pruned a little, plus one whole attention (layer 5) and one whole MLP (layer 20)."""
    import numpy as np

    L = space.num_layers
    x = np.concatenate([np.full(L, 1), np.full(L, 2)])
    x[5] = space.attn_levels
    x[L + 20] = space.mlp_levels
    return space.validate(x)
