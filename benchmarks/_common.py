"""What every study shares: the run context, the result, the environment and small helpers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Context:
    """How the suite was asked to run: ``quick`` (a smoke run: the same code on fewer steps and
    seeds), the number of ``seeds``, the torch ``device`` and the output folder."""

    quick: bool
    seeds: int
    device: str
    out_dir: Path

    def sized(self, full, quick):
        """``quick`` under ``--quick``, else ``full``."""
        return quick if self.quick else full

    @property
    def seed_list(self) -> list[int]:
        """The seeds of a noisy study: one under ``--quick``."""
        return list(range(1 if self.quick else self.seeds))


@dataclass
class StudyResult:
    """What a study returns (the contract in ``benchmarks/__main__.py``): a one-sentence verdict,
    plain-data records, table and figure specs from ``benchmarks._report``, settings, notes."""

    verdict: str
    records: dict[str, Any]
    tables: list[dict] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def frameworks() -> list[str]:
    """The installed frameworks among torch and jax (each study runs every one it can)."""
    return [name for name in ("torch", "jax") if installed(name)]


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
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"system": platform.system(), "cpu": cpu, "cpu_count": os.cpu_count(), "device": device}


def interleaved_medians(fns: dict, repeats: int, warmup: int = 3, sync=None, timer=None) -> dict:
    """Median seconds per call of each function, the repeats interleaved (one call of each in
    turn) so that a change of load on a shared machine hits every function alike; ``warmup``
    calls of each first; ``sync(output)`` after each call where given. A call is timed by the
    host's clock, or by ``timer(fn)`` (seconds) where given, e.g. :func:`cuda_event_timer`."""
    times = interleaved_times(fns, repeats, warmup, sync, timer)
    return {k: float(np.median(v)) for k, v in times.items()}


def interleaved_times(fns: dict, repeats: int, warmup: int = 3, sync=None, timer=None) -> dict:
    """Every timed call's seconds of :func:`interleaved_medians`, per function."""

    def clock(fn) -> float:
        start = time.perf_counter()
        out = fn()
        if sync is not None:
            sync(out)
        return time.perf_counter() - start

    timer = timer or clock
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timer(fn))
    return times


def cuda_event_timer(fn) -> float:
    """Seconds one call of ``fn`` spans on the GPU's timeline (CUDA events around it)."""
    import torch

    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def torch_timer(device: str):
    """The ``timer`` for torch work on ``device``: CUDA events on a GPU, else the host clock."""
    return cuda_event_timer if device.startswith("cuda") else None


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` intra-op threads, restored afterwards (also a decorator)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def jax_x64():
    """float64 in JAX for the block: ``jax.enable_x64`` where jax has it (0.8 and newer), else
    the ``jax_enable_x64`` flag, restored on exit (jax 0.4.33, the floor, has only the flag)."""
    import jax

    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
        return
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def xla_options(quick: bool) -> dict | None:
    """XLA's compiler options: under ``--quick`` no backend optimizations (compiling dominates
    a smoke run)."""
    return {"xla_backend_optimization_level": 0} if quick else None


def jit_compile(fn, *args, quick: bool = False, **jit_args):
    """``jax.jit(fn, **jit_args)`` compiled for ``args`` with :func:`xla_options`."""
    import jax

    return jax.jit(fn, **jit_args).lower(*args).compile(xla_options(quick))


def jit_run(fn, *args, quick: bool = False):
    """``jax.jit(fn)(*args)``, compiled by :func:`jit_compile`."""
    return jit_compile(fn, *args, quick=quick)(*args)


def log_steps(steps: int, points: int = 120) -> np.ndarray:
    """About ``points`` log-spaced indices in ``0..steps`` (0 and ``steps`` included)."""
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, points).astype(int)]))


def geo_mean(values, axis=0, floor: float = 1e-18) -> np.ndarray:
    """The geometric mean of positive values (clipped at ``floor``; non-finite ones count as
    1e300)."""
    v = np.asarray(values, np.float64)
    v = np.where(np.isfinite(v), np.maximum(v, floor), 1e300)
    return 10 ** np.log10(v).mean(axis=axis)
