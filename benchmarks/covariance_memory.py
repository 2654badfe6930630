"""Memory of the cached calibration covariances that ``refit`` compensation reads, on SmolLM2-135M:
memory-mapped (the default, ``importance_cache.map_entry``) against read into each process
(``load_entry``, as before), with two processes using the same cache entry at once, as the workers
of a local executor do.

    python benchmarks/covariance_memory.py     # writes its section of BENCHMARKS.md

Each process loads the model, scores it from the warm cache and evaluates one pruned configuration
(the re-fit reads every layer's covariances), then holds still while the parent reads its
``/proc/PID/smaps_rollup``: the proportional set size (Pss: pages shared by both count half to each)
and the private anonymous memory. Linux only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._markdown import write_section  # noqa: E402

MODES = ("map", "read")
WORKERS = 2


def worker(mode: str) -> None:
    """One process: score from the cache, evaluate one configuration, say so, wait for a line."""
    import numpy as np

    from evoprune.backend import importance
    from evoprune.backend.importance_cache import load_entry
    from evoprune.backend.pruner import load_backend
    from evoprune.backend.settings import BackendSettings

    if mode == "read":
        importance.map_entry = load_entry
    settings = BackendSettings(eval_tokens=256, calib_tokens=2048, seq_len=256)
    backend = load_backend("smollm2-135m", "builtin", settings)
    scores = backend.score()
    x = backend.space.upper // 2
    m = backend.evaluate(x)
    cov_bytes = scores.o_cov.nbytes + scores.down_cov.nbytes
    print(json.dumps({"mapped": isinstance(scores.down_cov, np.memmap), "cov_bytes": cov_bytes, "ok": m.ok}))
    sys.stdout.flush()
    sys.stdin.readline()


def _rollup(pid: int) -> dict[str, int]:
    """kB fields of /proc/PID/smaps_rollup, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        out[name] = int(value.split()[0]) * 1024
    return out


def measure(mode: str, n: int) -> dict:
    """Start ``n`` workers in ``mode``; once all are ready, their summed memory figures."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    try:
        ready = [json.loads(p.stdout.readline()) for p in procs]
        rollups = [_rollup(p.pid) for p in procs]
    finally:
        for p in procs:
            p.communicate("\n", timeout=60)
    return {
        "ready": ready,
        "pss": sum(r["Pss"] for r in rollups),
        "anonymous": sum(r["Anonymous"] for r in rollups),
        "pss_file": sum(r.get("Pss_File", 0) for r in rollups),
    }


def main() -> None:
    measure("map", 1)  # warms the cache: the scores and covariances are computed once, here
    results = {mode: measure(mode, WORKERS) for mode in MODES}
    cov = results["map"]["ready"][0]["cov_bytes"]
    assert all(r["ok"] for res in results.values() for r in res["ready"])
    assert [r["mapped"] for r in results["map"]["ready"]] == [True] * WORKERS
    mib = 2**20
    rows = "\n".join(
        f"| {mode} | {r['pss'] / mib:.0f} MiB | {r['anonymous'] / mib:.0f} MiB | {r['pss_file'] / mib:.0f} MiB |"
        for mode, r in results.items()
    )
    saved = results["read"]["pss"] - results["map"]["pss"]
    body = f"""
Command: `python benchmarks/covariance_memory.py` (SmolLM2-135M, float32, `refit` compensation with the
cache warm; {WORKERS} processes at once, each scoring from the cache and evaluating one configuration
whose re-fit reads every layer's covariances; Linux `smaps_rollup`, summed over the processes).
The cached covariances of the `o` and `down` inputs are {cov / mib:.0f} MiB.

| covariances | Pss, both processes | anonymous memory, both | Pss of file pages, both |
|---|---|---|---|
{rows}

Mapped, the two processes hold the covariances once between them, in the page cache, which the
system can drop and read back; read, each holds its own anonymous copy. The difference,
{saved / mib:.0f} MiB here, grows with the number of processes and with the model: a 7B model's
covariances are 17.7 GB a process when read.
"""
    write_section("Backend: memory of the cached covariances", body)
    print(body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
