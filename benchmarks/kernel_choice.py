"""Which kernel technology for the default CPU step? A measurement, not a study.

``python -m benchmarks.kernel_choice`` times one element-wise RMSprop step (torch's defaults,
float32, median of 15 after warm-up) on the step_time parameter sets with: torch's foreach
step, ``RMSpropODE``'s foreach path (runs of 1 MiB), ``torch.compile`` of the whole update over
the tensor list (inductor's C++ backend; its first call, tracing and compiling, is timed
separately), and ``RMSpropODE``'s native kernels (their build time is the first call in an
empty cache). It prints a table; benchmarks/README.md records a run.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from benchmarks._common import markdown_table, median_ms
from benchmarks.step_time import parameter_sets


def _compiled_update(ps, gs, vs, alpha: float, lr: float, eps: float) -> None:
    for p, g, v in zip(ps, gs, vs, strict=True):
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        p.addcdiv_(g, v.sqrt().add_(eps), value=-lr)


def main() -> None:
    # Empty caches: time the native build and inductor's compilation from scratch.
    os.environ["TWINOPT_CACHE_DIR"] = tempfile.mkdtemp()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
    import torch_opt
    from torch_opt import _native

    gen = torch.Generator().manual_seed(0)
    rows = []
    for set_name, shapes in parameter_sets(quick=False).items():
        if set_name.startswith("transformer"):
            continue
        ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        numel = sum(p.numel() for p in ps)
        src = torch.randn(numel, generator=gen)
        dst = torch.empty_like(src)
        copy_ms = median_ms(lambda s=src, d=dst: d.copy_(s), 15)

        def row(name, ms, first_s=None, numel=numel, copy_ms=copy_ms, set_name=set_name):
            gbs = 20 * numel / ms / 1e6
            copy_gbs = 8 * numel / copy_ms / 1e6
            first = "" if first_s is None else f"{first_s:.1f}"
            rows.append([set_name, name, f"{ms:.2f}", f"{100 * gbs / copy_gbs:.0f}%", first])

        row("torch.optim.RMSprop(foreach=True)", median_ms(torch.optim.RMSprop(ps).step, 15))
        row("RMSpropODE(foreach=True)", median_ms(torch_opt.RMSpropODE(ps, foreach=True).step, 15))
        gs = [p.grad for p in ps]
        vs = [torch.zeros_like(p) for p in ps]
        data = [p.detach() for p in ps]
        torch._dynamo.reset()
        compiled = torch.compile(_compiled_update)
        start = time.perf_counter()
        compiled(data, gs, vs, 0.99, 0.01, 1e-8)
        first = time.perf_counter() - start
        row(
            "torch.compile (inductor, C++)",
            median_ms(lambda f=compiled, a=(data, gs, vs): f(*a, 0.99, 0.01, 1e-8), 15),
            first,
        )
        opt = torch_opt.RMSpropODE(ps)
        opt.step()  # builds the kernels once per process (the first set's row shows it)
        first = _native.build_seconds() if _native.library() is not None else None
        row("RMSpropODE() (native kernels)", median_ms(opt.step, 15), first)
    print(
        markdown_table(
            ["set (float32)", "step", "ms / step", "of copy bandwidth", "first call (s)"], rows
        )
    )


if __name__ == "__main__":
    main()
