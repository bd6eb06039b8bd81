"""How big should the CPU runs of ``RMSpropODE``'s foreach path be? A sweep, not a study.

``python -m benchmarks.chunk_sweep`` times one foreach step on the step_time parameter sets
for several values of ``torch_opt.rmsprop_ode._foreach._CPU_CHUNK_BYTES`` (median of 15 after
warm-up) and prints a table; benchmarks/README.md records a run.
"""

from __future__ import annotations

import torch

import torch_opt
import torch_opt.rmsprop_ode._foreach as impl
from benchmarks._common import markdown_table, median_ms
from benchmarks.step_time import parameter_sets

SIZES = {
    "64 KiB": 1 << 16,
    "256 KiB": 1 << 18,
    "1 MiB": 1 << 20,
    "4 MiB": 1 << 22,
    "16 MiB": 1 << 24,
    "unbounded": 1 << 62,
}


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = []
    default = impl._CPU_CHUNK_BYTES
    try:
        for set_name, shapes in parameter_sets(quick=False).items():
            ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt = torch_opt.RMSpropODE(ps, foreach=True)
            times = []
            for size in SIZES.values():
                impl._CPU_CHUNK_BYTES = size
                times.append(f"{median_ms(opt.step, 15):.1f}")
            rows.append([set_name, *times])
    finally:
        impl._CPU_CHUNK_BYTES = default
    print(markdown_table(["set (float32, ms per step)", *SIZES], rows))


if __name__ == "__main__":
    main()
