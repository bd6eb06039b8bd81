"""MGS's step without its evaluations, native proposal vs torch's operations. A measurement,
not a study.

``python -m benchmarks.mgs_proposal`` times ``MGS.step(population=...)`` with a population that
returns zeros (so only the step's own work is timed: the normals, (1)-(7) and the update),
``K = 16``, float32, one thread, on MLPs with one hidden layer (the sampling study's two and a
larger one), once with the native proposal (``torch_opt/_native``, the CPU default) and once
with every block on the torch path; the two alternate call by call, medians after warm-up.
It prints a table; benchmarks/README.md records a run.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from benchmarks._common import markdown_table

MODELS = [((64, 32, 10), 64), ((64, 128, 10), 256), ((256, 1024, 10), 256)]
K = 16


def main() -> None:
    import torch_opt
    import torch_opt.sampling.shells as shells

    torch.set_num_threads(1)
    native_takes = shells.takes
    rows = []
    for sizes, batch in MODELS:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        d_in, hidden, d_out = sizes
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.randint(0, d_out, (batch,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()  # a surrogate in .grad
        opt = torch_opt.MGS(model.parameters(), num_samples=K, lr=0.0, seed=0)
        zeros = torch.zeros(K + 1)

        def population(stacked, zeros=zeros):
            return zeros

        paths = {"native": native_takes, "torch": lambda *args: False}
        repeats = 200 if hidden < 1024 else 20
        times: dict[str, list[float]] = {key: [] for key in paths}
        try:
            for i in range(repeats + 5):
                for key, takes in paths.items():
                    shells.takes = takes
                    start = time.perf_counter()
                    opt.step(population=population)
                    if i >= 5:
                        times[key].append(time.perf_counter() - start)
        finally:
            shells.takes = native_takes
        native, plain = (float(np.median(times[key])) * 1e3 for key in ("native", "torch"))
        count = sum(p.numel() for p in model.parameters())
        rows.append(
            [
                f"MLP {'-'.join(map(str, sizes))} ({count:,} parameters)",
                f"{plain:.3f}",
                f"{native:.3f}",
                f"{plain / native:.2f}x",
            ]
        )
    print(
        markdown_table(
            [
                f"MGS step without evaluations, K = {K}, float32, 1 thread",
                "torch ops (ms)",
                "native proposal (ms)",
                "speed-up",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
