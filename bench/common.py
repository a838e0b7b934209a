"""What the benchmarks share: the miniature model, its labelled prompts, and table printing."""

from __future__ import annotations

import os
import sys

# On a machine shared with other jobs, OpenMP threads that spin while they wait for each other (libgomp spins before
# it sleeps by default, and throughout with OMP_WAIT_POLICY=ACTIVE) lose whole time slices whenever one of them is
# descheduled: a batch-1 scan of 32 prompts on the miniature at 2 threads took 9-11 s with ACTIVE and 1.2-4 s with
# PASSIVE on the same loaded machine (load average 4-5 on 2 cores), and the default's runs ranged over 20x. The
# benchmarks therefore run with OMP_WAIT_POLICY=PASSIVE unless the caller chose a policy; OpenMP reads it when torch
# loads, so a benchmark started without it starts itself again once, with it set.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if sys.argv and sys.argv[0].endswith(".py"):
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memguard.miniature import MODEL_DIR  # noqa: E402
from memguard.pipeline import Model  # noqa: E402

MODEL_PATH = MODEL_DIR  # the model of this run: setup(path) sets it (--model; the SDXL miniature, say)


def setup(path: Path | None = None) -> Model:
    """Load the miniature (or ``path``: a miniature-like directory with ``prompts/``, ``references/``, ``eval/``)
    with 2 torch threads (``MEMGUARD_BENCH_THREADS`` overrides: 1 is faster on a machine other jobs load)."""
    global MODEL_PATH
    torch.set_num_threads(int(os.environ.get("MEMGUARD_BENCH_THREADS", "2")))
    MODEL_PATH = Path(path) if path is not None else MODEL_DIR
    return Model.load(MODEL_PATH)


def labelled(label: str) -> list[dict]:
    """Rows of the model's ``prompts/labels.jsonl`` with this label (memorized, template, general)."""
    lines = (MODEL_PATH / "prompts" / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if row["label"] == label]


def reference(row: dict) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.load(MODEL_PATH / row["reference"])).float()


def table(header: list[str], rows: list[list], title: str) -> None:
    """Print a fixed-width table (also valid Markdown) under a title line."""
    cells = [[str(c) if not isinstance(c, float) else f"{c:.3f}" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def generate(model: Model, prompts: list[str], seeds: list[int], steps: int = 50, batch: int = 32, **kwargs) -> list:
    """Every (prompt, seed) generation, ``batch`` rows per ``pipeline.sample`` call (keyword arguments go to it)."""
    from memguard.pipeline import sample

    rows = [(p, s) for p in prompts for s in seeds]
    gens = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        gens += sample(model, [p for p, _ in chunk], [s for _, s in chunk], steps=steps, **kwargs)
    return gens


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# --- measurements that hold on a shared machine -------------------------------------------------------------------
#
# Every wall-time figure is a ratio of interleaved repeats: each round runs every case once (the order reversed on
# every other round, so a slow drift of the machine's load weighs on all cases alike), the ratio is taken within the
# round, and the table reports the median ratio over the rounds with its spread. Warm-up runs are not timed. The
# machine's load (1-minute load average before and after, cores, torch threads) is printed with every table.
# Memory is measured in a fresh process per configuration: the resident set after the weights are loaded is the
# baseline, the kernel's high-water mark is reset there (``/proc/self/clear_refs``), and the peak after the run is read
# from ``VmHWM``: the peak above the weights and the whole-process peak.


def machine_load() -> dict:
    """The 1-, 5- and 15-minute load averages, the cores and torch's threads now."""
    return {
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }


class Load:
    """Records :func:`machine_load` on entry and exit; ``line()`` says it under a table."""

    def __enter__(self):
        self.before = machine_load()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.after = machine_load()
        self.seconds = time.perf_counter() - self.start

    def line(self) -> str:
        b, a = self.before, self.after
        return (
            f"machine: {b['cores']} cores, torch {b['threads']} threads, OMP_WAIT_POLICY {b['omp_wait_policy']}; "
            f"load average (1/5/15 min) "
            f"{'/'.join(map(str, b['loadavg']))} before, {'/'.join(map(str, a['loadavg']))} after "
            f"({self.seconds:.0f} s)"
        )


@dataclass
class Timings:
    """Seconds per case and round: ``wall`` (perf_counter) and ``cpu`` (the process's CPU time, all its threads)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleave(cases: dict, repeats: int, warmup: int = 1, log=None) -> Timings:
    """Time each case (a callable) over ``repeats`` rounds, A B C, C B A, A B C, ...; ``warmup`` untimed rounds first.
    ``log(round, name, wall, cpu)`` is called after each timed run (progress on long benchmarks)."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    out = Timings({name: [] for name in names}, {name: [] for name in names})
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start, start_cpu = time.perf_counter(), time.process_time()
            cases[name]()
            out.wall[name].append(time.perf_counter() - start)
            out.cpu[name].append(time.process_time() - start_cpu)
            if log is not None:
                log(r, name, out.wall[name][-1], out.cpu[name][-1])
    return out


def print_progress(r: int, name: str, wall: float, cpu: float) -> None:
    print(f"  round {r + 1}: {name}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)


@dataclass
class Ratio:
    """Per-round ratios ``case / base``: their median, min-max and interquartile range."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.values), max(self.values)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.values) < 4:
            return self.spread
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return q[0], q[2]

    def __str__(self) -> str:
        lo, hi = self.spread
        return f"{self.median:.3f} ({lo:.3f}-{hi:.3f})"


def ratio(times: dict[str, list[float]], case: str, base: str, invert: bool = False) -> Ratio:
    """``times[case][i] / times[base][i]`` per round (``base / case`` with ``invert``: a speed-up)."""
    pairs = zip(times[case], times[base])
    return Ratio([(b / c) if invert else (c / b) for c, b in pairs])


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of ``values``, each formatted with ``fmt``; just the value when there is one."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _status_kib(field: str) -> int:
    import re

    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def peak_memory(run) -> dict:
    """Call ``run()`` and report the resident set (KiB) before it (the baseline: weights loaded) and at its peak.

    The peak is ``VmHWM`` after resetting the high-water mark to the current resident set (Linux ``clear_refs`` 5);
    where that cannot be reset, ``ru_maxrss`` (the whole process's peak, which then also covers loading: run each
    configuration in its own process and load nothing larger than the run before it)."""
    import gc
    import resource

    gc.collect()
    base = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = _status_kib("VmHWM") <= base + 1024
    except OSError:
        reset = False
    run()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"base_kib": base, "peak_kib": peak, "above_kib": peak - base, "hwm_reset": reset}


# glibc's malloc serves large blocks with mmap (returned to the system on free) above a threshold that it raises, up
# to 32 MiB, each time such a block is freed; below it, freed memory stays in the heap, fragmented, and counted in the
# resident set. Fixing the threshold (which turns the adjustment off) makes the resident set follow the live tensors.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def in_subprocess(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script args`` in a fresh interpreter (``env`` added to the environment) and return the JSON object on its
    last line of output."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-u", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,  # a failure is raised below with its stderr
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
