"""What every study shares: the run context, the result record, the environment, tables."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Context:
    """How the suite was asked to run."""

    quick: bool
    seeds: int
    device: str
    out_dir: Path

    def path(self, name: str) -> Path:
        return self.out_dir / name


@dataclass
class StudyResult:
    """What a study reports: a verdict line, markdown tables, figures, and its raw data."""

    name: str
    question: str
    verdict: str
    settings: dict[str, Any]
    data: dict[str, Any]
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def frameworks() -> list[str]:
    """The installed frameworks among torch and jax (each study runs every one it can)."""
    return [name for name in ("torch", "jax") if importlib.util.find_spec(name) is not None]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("twinopt", "numpy", "scipy", "torch", "jax", "jaxlib", "optax", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "device": device,
    }


def interleaved_medians(
    fns: dict,
    repeats: int,
    warmup: int = 3,
    sync=None,
    block: int = 1,
    block_warmup: int = 0,
    timer=None,
) -> dict:
    """Median seconds per call of each function, the repeats interleaved (one call of each in
    turn, ``sync(output)`` after each where given) so that a change of load on the shared
    machine (its share of cache and memory bandwidth drifts during a run) hits every function
    alike; ``warmup`` calls of each first. A call is timed by the host's clock, or by
    ``timer(fn)`` (seconds) where given, e.g. :func:`cuda_event_timer`.

    With ``block > 1`` each turn is a block instead of one call: ``block_warmup`` untimed calls,
    then ``block`` timed ones, back to back (a function's steady speed when repeated alone,
    still measured in alternation with the others); the median is over all ``repeats * block``
    timed calls."""

    def call(fn) -> None:
        out = fn()
        if sync is not None:
            sync(out)

    def clock(fn) -> float:
        start = time.perf_counter()
        call(fn)
        return time.perf_counter() - start

    timer = clock if timer is None else timer
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            for _ in range(block_warmup):
                call(fn)
            times[key] += [timer(fn) for _ in range(block)]
    return {key: float(np.median(t)) for key, t in times.items()}


def cuda_event_timer(fn) -> float:
    """Seconds one call of ``fn`` spans on the GPU's timeline: between CUDA events recorded on
    the current stream before and after it (the host's launches included where the GPU waits
    for them, not the host's wait for the end), read once the end event has completed."""
    import torch

    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def torch_timer(device: str):
    """The ``timer`` of :func:`interleaved_medians` for torch work on ``device``: CUDA events
    on a GPU, the host's clock (``None``) elsewhere."""
    return cuda_event_timer if device.startswith("cuda") else None


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds per call of one function (``warmup`` calls first)."""
    return interleaved_medians({"fn": fn}, repeats, warmup)["fn"] * 1e3


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def progress(items: Sequence[Any], desc: str) -> Iterable[Any]:
    """``tqdm`` over ``items`` when it is installed, else a plain counter on stderr."""
    try:
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, leave=False)
    except ImportError:
        import sys

        for i, item in enumerate(items, 1):
            print(f"  {desc}: {i}/{len(items)}", file=sys.stderr, flush=True)
            yield item


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(ctx: Context, fig, name: str) -> str:
    """Write ``fig`` as ``name`` (PNG) into the run's folder, close it, return ``name``."""
    fig.tight_layout()
    fig.savefig(ctx.path(name), dpi=110)
    pyplot().close(fig)
    return name


# The JSON file each study writes (``<study>.json``), as a JSON Schema (draft 2020-12); the
# smoke test validates every study's file against it.
RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "study",
        "question",
        "verdict",
        "seconds",
        "settings",
        "environment",
        "figures",
        "notes",
        "results",
    ],
    "properties": {
        "study": {"type": "string", "minLength": 1},
        "question": {"type": "string", "pattern": r"\?$"},
        "verdict": {"type": "string", "minLength": 1},
        "seconds": {"type": "number", "exclusiveMinimum": 0},
        "settings": {"type": "object", "minProperties": 1},
        "environment": {
            "type": "object",
            "required": ["started", "machine", "versions", "quick", "seeds"],
            "properties": {
                "started": {"type": "string"},
                "machine": {
                    "type": "object",
                    "required": ["system", "machine", "cpu", "cpu_count", "device"],
                },
                "versions": {
                    "type": "object",
                    "required": ["python", "numpy", "torch", "jax", "optax"],
                    "additionalProperties": {"type": "string"},
                },
                "quick": {"type": "boolean"},
                "seeds": {"type": "integer", "minimum": 1},
            },
        },
        "figures": {"type": "array", "items": {"type": "string", "pattern": r"\.png$"}},
        "notes": {"type": "array", "items": {"type": "string"}},
        "results": {"type": "object", "minProperties": 1},
    },
}
