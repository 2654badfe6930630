"""Memory and time of summing the calibration covariances a few layers a pass, on SmolLM2-135M:
``obs`` scores and ``refit`` covariances computed from an empty cache, with memory for every layer's
sums at once (one pass) against memory for ``N`` layers' (``ActivationStats.plan_passes``).

    python benchmarks/covariance_passes.py     # writes its section of BENCHMARKS.md

Each setting runs in a fresh process with its own empty cache folder; the available memory the
pass plan sees is set to what holds ``N`` layers' float64 sums. A sampling thread reads the
process's anonymous resident memory (``RssAnon`` of ``/proc/self/status``) every 20 ms; the figure
is its peak over the scoring, less its value before (after ``malloc_trim`` returned what loading
freed, which the allocator would otherwise hand out again unseen). The scores and the cached covariances of every
setting are compared with the one-pass setting's, to the last bit. Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._markdown import write_section  # noqa: E402

CALIB_TOKENS = 4096
SETTINGS = (None, 10, 3)  # layers a pass (None: all of them)


def _anonymous() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class _Loaded(Exception):
    """The model is loaded: scoring is what is measured."""


def worker(layers_per_pass: int | None) -> None:
    """One process: score SmolLM2-135M from an empty cache; print its figures as JSON."""
    import hashlib

    import numpy as np

    from evoprune.backend import activation_stats
    from evoprune.backend.pruner import load_backend
    from evoprune.backend.settings import BackendSettings

    settings = BackendSettings(calib_tokens=CALIB_TOKENS)
    loaded = []

    def stop_before_scoring(backend) -> None:  # load_backend would score (and measure the dense model)
        loaded.append(backend)
        raise _Loaded

    with contextlib.suppress(_Loaded):
        load_backend("smollm2-135m", "builtin", settings, check=stop_before_scoring)
    backend = loaded[0]
    layers = backend.adapter.layers(backend.loaded.model)
    per_layer = 8 * max(p.o.in_features**2 + p.down.in_features**2 for p in layers)
    if layers_per_pass is not None:  # the cached copy goes to disk: the sums alone count
        have = int((layers_per_pass + 0.5) * per_layer / activation_stats.SUMS_SHARE)
        activation_stats.available_bytes = lambda _device: have
    passes = []
    plan = activation_stats.ActivationStats._run

    def counted(self, *args):
        passes.append(1)
        return plan(self, *args)

    activation_stats.ActivationStats._run = counted
    # Memory freed while loading stays with the allocator and would hide new allocations from RssAnon.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, peak, done = _anonymous(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anonymous())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    scores = backend.score()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    digest = hashlib.sha256()
    for a in (scores.attn, scores.mlp, np.asarray(scores.o_cov), np.asarray(scores.down_cov)):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert not backend.importance_cached, "the cache folder was not empty"
    print(json.dumps({
        "layers_per_pass": layers_per_pass or len(layers), "passes": len(passes), "seconds": seconds,
        "peak_anonymous": peak[0] - before, "sums_bytes": per_layer * len(layers),
        "cov_bytes": scores.o_cov.nbytes + scores.down_cov.nbytes, "digest": digest.hexdigest(),
        "mapped": isinstance(scores.down_cov, np.memmap), "layers": len(layers),
    }))  # fmt: skip


def measure(layers_per_pass: int | None) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EVOPRUNE_CACHE_DIR": cache, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        args = [sys.executable, __file__, "--worker", str(layers_per_pass or 0)]
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    results = [measure(n) for n in SETTINGS]
    whole = results[0]
    n, layers = SETTINGS[-1], whole["layers"]
    # The first pass runs every layer; each later one stops after the last layer it sums.
    full_passes = (layers + sum(min(layers, i + n) for i in range(n, layers, n))) / layers
    assert all(r["digest"] == whole["digest"] and r["mapped"] for r in results), "the settings disagree"
    mib = 2**20
    rows = "\n".join(
        f"| {r['layers_per_pass']} | {r['passes']} | {r['peak_anonymous'] / mib:.0f} MiB | "
        f"{r['peak_anonymous'] / whole['peak_anonymous']:.2f} | {r['seconds']:.0f} s | "
        f"{r['seconds'] / whole['seconds']:.2f} |"
        for r in results
    )
    body = f"""
Command: `python benchmarks/covariance_passes.py` (SmolLM2-135M, float32, one torch thread, `obs`
scores and the `refit` covariances from an empty cache, {CALIB_TOKENS} calibration tokens in
512-token windows; each setting in a fresh process whose pass plan sees memory for that many
layers' float64 sums; peak anonymous memory of the scoring over the process's before it).
Every layer's float64 sums take {whole["sums_bytes"] / mib:.0f} MiB; the cached float32
covariances, written into their cache file a layer at a time, {whole["cov_bytes"] / mib:.0f} MiB.

| layers a pass | calibration passes | peak anonymous memory | vs one pass | scoring time | vs one pass |
|---|---|---|---|---|---|
{rows}

Scores and covariances are equal to the last bit in every setting. A later pass stops after the
last layer it sums, so {n} layers a pass cost the forward passes of {full_passes:.1f} full ones over
the calibration windows, not {-(-layers // n)}. Before, the sums of every
layer and their float32 copy were held at once (12 bytes a value: {12 * whole["cov_bytes"] / 4 / mib:.0f}
MiB here, 53 GB for Llama-2-7B), and a machine with less memory was refused; now a 7B model needs
one layer's sums, 1.1 GB, and the passes that fit.
"""
    write_section("Backend: covariances summed a few layers a pass", body)
    print(body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]) or None)
    else:
        main()
