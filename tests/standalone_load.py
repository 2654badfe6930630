"""Run in a fresh process: load an export with plain transformers while evoprune is unimportable.

Usage: python standalone_load.py EXPORT_DIR TOKENS.npy OUT.npz [EXPORT_DIR TOKENS.npy OUT.npz ...]

Several exports share one interpreter start (seconds each); give them distinct folder names, as
transformers names the remote-code module of a local export after its folder.
"""

import importlib.abc
import sys


class _BlockOurPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("evoprune", "problems", "surrogates"):
            raise ImportError(f"{name} must not be needed to load an export")
        return None


sys.meta_path.insert(0, _BlockOurPackages())

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def load(export_dir: str, tokens_path: str, out_path: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    tokens = torch.from_numpy(np.load(tokens_path))
    with torch.inference_mode():
        logits = model(input_ids=tokens).logits
    generated = model.generate(tokens[:1, :8], max_new_tokens=6, do_sample=False, pad_token_id=0)
    np.savez(
        out_path,
        logits=logits.numpy(),
        params=np.array(sum(p.numel() for p in model.parameters())),
        generated=generated.numpy(),
        text=np.array(tokenizer.decode(generated[0])),
    )


args = sys.argv[1:]
if not args or len(args) % 3:
    sys.exit(__doc__)
for i in range(0, len(args), 3):
    load(*args[i : i + 3])
