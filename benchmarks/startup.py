"""Start-up cost of the command line: ``import evoprune.cli`` and ``python -m evoprune --help``, fresh each time.

Every command, and every test that runs the CLI in a subprocess, pays this before doing anything.
Each figure is the median of ``--repeats`` fresh interpreters (wall and CPU seconds, the CPU time
being the child's user + system time, which is steadier than the wall time on a busy machine).
``--against DIR`` times another checkout of this repository (e.g. ``git worktree add /tmp/old
main``) in alternation with this one, so that both see the same load, and reports the ratio. The
heaviest libraries still imported by our modules come from one ``python -X importtime`` run.
Writes the "Start-up" section of ``BENCHMARKS.md``::

    .venv/bin/python benchmarks/startup.py [--repeats 7] [--against DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._markdown import BENCHMARKS, write_section  # noqa: E402

SECTION = "Start-up: importing the command line"
OURS = ("evoprune", "problems", "surrogates")
COMMANDS = {
    "import evoprune.cli": ["-c", "import evoprune.cli"],
    "python -m evoprune --help": ["-m", "evoprune", "--help"],
}


def _env(checkout: Path) -> dict[str, str]:
    # The checkout first on the path, whatever the virtual environment's editable install points at.
    return {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def describe(checkout: Path) -> str:
    """The commit a checkout is at (its path if it is not a git checkout)."""
    commit = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return f"`{commit.stdout.strip()}`" if commit.returncode == 0 else f"`{checkout}`"


def timed_run(checkout: Path, args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh interpreter running ``args`` in ``checkout``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=checkout, env=_env(checkout), check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heaviest_imports(checkout: Path, n: int = 6) -> list[tuple[str, str, float]]:
    """(library, imported by, cumulative seconds) of the costliest third-party imports our modules make."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import evoprune.cli"],
        cwd=checkout, env=_env(checkout), check=True, capture_output=True, text=True,
    ).stderr  # fmt: skip
    rows = []  # (cumulative us, depth, name), in the order printed: children before their parent
    for line in out.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        rows.append((int(parts[1]), (len(name) - len(name.lstrip())) // 2, name.strip()))
    found = []
    for i, (cumulative, depth, name) in enumerate(rows):
        parent = next((p for _, d, p in rows[i + 1 :] if d < depth), "")
        if name.split(".")[0] not in OURS and parent.split(".")[0] in OURS:
            found.append((name, parent, cumulative / 1e6))
    return sorted(found, key=lambda row: -row[2])[:n]


def measure(checkouts: list[Path], repeats: int) -> dict[tuple[Path, str], tuple[float, float]]:
    """Median (wall, CPU) per checkout and command, the checkouts taking turns."""
    samples: dict[tuple[Path, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for checkout in checkouts:
            for label, args in COMMANDS.items():
                samples.setdefault((checkout, label), []).append(timed_run(checkout, args))
    return {
        key: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for key, runs in samples.items()
    }


def render(medians, checkouts: list[Path], repeats: int, heavy) -> str:
    here, other = checkouts[0], checkouts[1] if len(checkouts) > 1 else None
    head = "| command | wall s | CPU s |" + (" wall s, other | CPU s, other | CPU ratio |" if other else "")
    rule = "|---|---:|---:|" + ("---:|---:|---:|" if other else "")
    lines = [head, rule]
    for label in COMMANDS:
        wall, cpu = medians[(here, label)]
        row = f"| `{label}` | {wall:.2f} | {cpu:.2f} |"
        if other:
            wall_o, cpu_o = medians[(other, label)]
            row += f" {wall_o:.2f} | {cpu_o:.2f} | {cpu / cpu_o:.2f} |"
        lines.append(row)
    compared = f", taking turns with the other checkout, at {describe(other)}" if other else ""
    bytecode = "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    load = os.getloadavg()[0]
    heavy_rows = "\n".join(f"| `{name}` | `{parent}` | {s:.2f} |" for name, parent, s in heavy)
    against = " --against DIR" if other else ""
    return f"""
Command: `python benchmarks/startup.py --repeats {repeats}{against}` (Python {platform.python_version()},
{os.cpu_count()} cores, load average {load:.1f} at the end, bytecode caching {bytecode}). Medians of
{repeats} fresh interpreters per command, this checkout at {describe(here)}{compared}; CPU is the
child's user + system time.

{chr(10).join(lines)}

The built-in surrogates register by name when `surrogates` is imported but import their library
(NGBoost, XGBoost, scikit-learn's ensembles and Gaussian processes, SciPy's `nnls`) only when
fitted: NGBoost alone took about half of the CLI's import time when it was imported eagerly. The
libraries our modules still import at start-up, by cumulative time in one `-X importtime` run
(a library shared by several is charged to the first that imports it):

| library | imported by | s |
|---|---|---:|
{heavy_rows}

PyTorch comes with the `evoprune` package itself (the backend is part of the public API); the
scikit-learn base classes, which every surrogate needs for the estimator contract, bring SciPy
and pandas.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--against", type=Path, help="another checkout to time in alternation with this one")
    p.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    p.add_argument("--markdown", type=Path, default=BENCHMARKS)
    args = p.parse_args()
    checkouts = [ROOT] + ([args.against.resolve()] if args.against else [])
    medians = measure(checkouts, args.repeats)
    body = render(medians, checkouts, args.repeats, heaviest_imports(ROOT))
    print(body)
    if not args.no_write:
        write_section(SECTION, body, args.markdown)


if __name__ == "__main__":
    main()
