"""The native CPU kernels of the default step paths: built on first use, registered as torch ops.

An optimizer step is memory-bound. torch's ``_foreach_*`` chain on the CPU makes one pass over
memory per operation (five or more for RMSprop); ``kernels.c`` makes one, reading every operand
and writing every result once, with torch's per-element operations in torch's order.

The library is compiled once per machine with the system C compiler (``$CC``, else ``cc``) into
a cache directory (``$TWINOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/twinopt``, else
``~/.cache/twinopt``; where that cannot be written, a private directory under the temporary
directory), under a name that hashes the source, the flags, the compiler and the CPU's feature
flags, so later processes load it without compiling. It is loaded with ctypes, every function's
signature declared (:data:`SIGNATURES`). Where it cannot be built (no compiler), the optimizers
take their ``torch._foreach_*`` path with one warning per process. ``TWINOPT_NATIVE=0`` turns
the native kernels off (no compiler is ever run).

The kernels reach the optimizers as torch custom ops (``torch.library.custom_op``: a schema,
the arguments they mutate, a fake implementation for tracing), defined next to the math they
implement (``rmsprop_ode.py``, ``amos.py``, ``sampling.py``): ``torch.compile(opt.step)``
keeps them in its graph, and autograd's version counters see the mutations. Only plain,
contiguous, dense float32/float64 CPU tensors take them (:func:`eligible`); everything else
(other dtypes and devices, DTensor, ``differentiable``) keeps the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "NativeUnavailableWarning",
    "available",
    "build_seconds",
    "eligible",
    "library",
    "numels",
    "pointers",
    "threads",
]

SOURCE = Path(__file__).with_name("kernels.c")
ABI = 6
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC"]
OPENMP = ["-fopenmp"]
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
C_TYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}

# RMSprop-ODE flags, as in kernels.c.
F_MAXIMIZE, F_WEIGHT_DECAY, F_CENTERED, F_BIAS, F_EPS_IN_SQRT, F_MOMENTUM = (
    1 << k for k in range(6)
)


class NativeUnavailableWarning(UserWarning):
    """The native kernels could not be built; the slower torch path is used instead."""


class AmosHyper(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_double)
        for name in ("beta", "eps", "extra_l2", "clip", "momentum", "lr_sq", "c_sqrt_lr")
    ]


class AmosTensor(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in ("bias", "init_lr", "d_sqrt_init_lr")]


_INT, _I64, _F64, _DATA = ctypes.c_int, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
_TENSORS = ctypes.POINTER(ctypes.c_void_p)  # T **: one data pointer per tensor
_NUMELS = ctypes.POINTER(ctypes.c_int64)
_DOUBLES = ctypes.POINTER(ctypes.c_double)
_AMOS = [ctypes.POINTER(AmosTensor), ctypes.POINTER(AmosHyper)]

# The signature of every function kernels.c exports (per dtype suffix), as its C declaration
# reads: ctypes then checks each call's arguments and never guesses a type.
SIGNATURES: dict[str, list] = {
    "rmsprop": [_INT, _I64, *[_TENSORS] * 5, _NUMELS, _DOUBLES, *[_F64] * 5, _INT],
    "global_norms": [_INT, _I64, *[_TENSORS] * 3, _NUMELS, _F64, _F64, _DOUBLES, _INT],
    "global_apply": [_INT, _I64, *[_TENSORS] * 3, _NUMELS, *[_F64] * 4, _INT],
    "amos_full": [_INT, _I64, *[_TENSORS] * 5, _NUMELS, *_AMOS, _INT],
    "amos_scalar": [_INT, _I64, *[_TENSORS] * 5, _NUMELS, *_AMOS, _DOUBLES, *[_DATA] * 3, _INT],
    "mgs_propose": [
        _I64,
        _I64,
        _INT,
        *[_TENSORS] * 3,
        _NUMELS,
        _DATA,
        _DATA,
        ctypes.POINTER(ctypes.c_uint8),
        _DATA,
        _DATA,
        _INT,
    ],
}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare every exported function's argument and result types on ``lib``."""
    lib.twinopt_abi.argtypes = []
    lib.twinopt_abi.restype = ctypes.c_int
    for name, argtypes in SIGNATURES.items():
        for suffix in DTYPES.values():
            fn = getattr(lib, f"twinopt_{name}_{suffix}")
            fn.argtypes = argtypes
            fn.restype = None
    return lib


_lock = threading.Lock()
_state: dict = {}  # "lib": the CDLL or None; "seconds": build/load time


def cache_dir() -> Path:
    root = os.environ.get("TWINOPT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "twinopt" if xdg else Path.home() / ".cache" / "twinopt"


def _writable_cache() -> Path:
    """:func:`cache_dir`, or, where it cannot be written (a read-only home), a private
    directory under the system's temporary directory."""
    candidates = [cache_dir()]
    if hasattr(os, "getuid"):
        candidates.append(Path(tempfile.gettempdir()) / f"twinopt-{os.getuid()}")
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            mine = not hasattr(os, "getuid") or directory.stat().st_uid == os.getuid()
            if mine and os.access(directory, os.W_OK):
                return directory
        except OSError:
            continue
    raise OSError("no writable cache directory for the native kernels (set TWINOPT_CACHE_DIR)")


def _cpu_signature() -> str:
    """The CPU's feature flags (``-march=native`` depends on them), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout


def _compile(cc: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file beside ``target`` and rename it into place (atomic, so
    concurrent processes never load a half-written library)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise OSError(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler ({cc!r} not found; set CC)")
    source = SOURCE.read_bytes()
    version = _compiler_version(cc)
    directory = _writable_cache()
    last: Exception | None = None
    portable = [f for f in FLAGS if f != "-march=native"]
    # Without OpenMP: one thread, still one pass; without -march=native: for compilers that
    # do not know it.
    for flags in (FLAGS + OPENMP, FLAGS, portable):
        key = hashlib.sha256(
            b"\0".join(
                [source, " ".join(flags).encode(), version.encode(), _cpu_signature().encode()]
            )
        ).hexdigest()[:20]
        target = directory / f"kernels-{key}.so"
        try:
            if not target.exists():
                _compile(cc, flags, target)
            lib = _declare(ctypes.CDLL(str(target)))
            if lib.twinopt_abi() != ABI:
                raise OSError(f"{target} has ABI {lib.twinopt_abi()}, expected {ABI}")
            return lib
        except OSError as err:
            last = err
    raise OSError(str(last))


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on the first call; ``None`` where they are off or
    cannot be built (then one :class:`NativeUnavailableWarning` per process)."""
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        if os.environ.get("TWINOPT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _state.update(lib=None, seconds=0.0)
            return None
        start = time.perf_counter()
        try:
            lib = _build()
        except (OSError, subprocess.SubprocessError) as err:
            _state.update(lib=None, seconds=time.perf_counter() - start)
            warnings.warn(
                "twinopt: the native CPU kernels could not be built "
                f"({err}); the optimizers (RMSpropODE, Amos, MGS) use their slower torch path. "
                "Install a C compiler (or set CC), or set TWINOPT_NATIVE=0 to silence this.",
                NativeUnavailableWarning,
                stacklevel=3,
            )
            return None
        _state.update(lib=lib, seconds=time.perf_counter() - start)
        return lib


def available() -> bool:
    """Whether the native kernels are loaded (building them on the first call)."""
    if "lib" not in _state:
        library()
    return _state["lib"] is not None


def build_seconds() -> float | None:
    """Seconds the first :func:`library` call took (compiling or loading from the cache), or
    ``None`` before that call."""
    return _state.get("seconds")


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eligible(tensors: Sequence[Tensor | None]) -> bool:
    """Whether these parallel tensors (one parameter's, ``None`` entries skipped) can take the
    native kernels: plain (not a subclass such as DTensor), dense, contiguous CPU tensors of
    one dtype, float32 or float64."""
    dtype = tensors[0].dtype
    if dtype not in DTYPES:
        return False
    strided = torch.strided
    for t in tensors:
        if t is not None and (
            type(t) not in _PLAIN
            or t.dtype is not dtype
            or not t.is_cpu
            or t.layout is not strided
            or not t.is_contiguous()
        ):
            return False
    return True


def pointers(tensors: Sequence[Tensor] | None, n: int) -> ctypes.Array:
    """The data pointers of ``tensors`` as a C array (of ``n`` nulls for ``None`` or ``[]``)."""
    array = ctypes.c_void_p * n
    if not tensors:
        return array()
    return array(*[t.data_ptr() for t in tensors])


def pointers_into(buffer: Tensor, starts: Sequence[int]) -> ctypes.Array:
    """The data pointers of the entries ``starts`` (element offsets) of ``buffer``, a C array."""
    base, size = buffer.data_ptr(), buffer.element_size()
    return (ctypes.c_void_p * len(starts))(*[base + i * size for i in starts])


def numels(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])


# Entries per thread below which a kernel runs on fewer threads (torch's own grain size): a
# parallel region costs a wake-up per thread, which is milliseconds when the cores are busy.
GRAIN = 1 << 15


def threads(tensors: Sequence[Tensor]) -> int:
    """Threads for one kernel call over ``tensors``: torch's intra-op count, fewer for little
    work."""
    total = sum(t.numel() for t in tensors)
    return max(1, min(torch.get_num_threads(), total // GRAIN))
