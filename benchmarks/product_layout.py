"""When does a CPU batched product run faster transposed? A measurement, not a study.

``python -m benchmarks.product_layout`` times ``torch.bmm(a, b)`` against the same product
computed transposed, ``torch.bmm(b^T, a^T)^T``, for ``a`` of shape ``(B, M, 64)`` and ``b`` a
transposed weight ``(B, N, 64)^T`` (what a linear layer of ``B`` parameter sets becomes under
``vmap``), over float32, float64 and bfloat16, ``B`` in {5, 17, 65}, ``M`` (rows of the output)
in {32, 64, 256} and ``N`` (columns) in {1, 4, 8, 10, 15, 16, 32}; one thread, the two
alternating call by call, medians after warm-up. Each cell is plain / transposed (above 1: the
transposed product is faster); a ``*`` marks the products that the compiled population's pass
(``torch_opt/sampling/_products.py``, ``thin``) computes transposed. It prints a table and a
summary of the rule against the measurement; benchmarks/README.md records a run.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._common import interleaved_medians, markdown_table

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
BATCHES = (5, 17, 65)
ROWS = (32, 64, 256)
COLUMNS = (1, 4, 8, 10, 15, 16, 32)
INNER = 64
REPEATS = 60


def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median time of ``bmm(a, b)`` over that of ``bmm(b^T, a^T)^T``, the calls alternating."""
    times = interleaved_medians(
        {"plain": lambda: torch.bmm(a, b), "transposed": lambda: torch.bmm(b.mT, a.mT).mT},
        REPEATS,
    )
    return times["plain"] / times["transposed"]


def main() -> None:
    from torch_opt.sampling._products import thin

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows, chosen, left = [], [], []
    for dtype in DTYPES:
        for batch in BATCHES:
            for m in ROWS:
                cells = []
                for n in COLUMNS:
                    a = torch.randn(batch, m, INNER, generator=gen).to(dtype)
                    b = torch.randn(batch, n, INNER, generator=gen).to(dtype).mT
                    r = ratio(a, b)
                    picked = thin((batch, m, n), dtype)
                    (chosen if picked else left).append(r)
                    cells.append(f"{r:.2f}{'*' if picked else ''}")
                rows.append([str(dtype).removeprefix("torch."), batch, m, *cells])
    print(markdown_table(["dtype", "B", "M", *(f"N={n}" for n in COLUMNS)], rows))
    print(
        f"\nThe rule transposes {len(chosen)} of {len(chosen) + len(left)} products: "
        f"plain / transposed {min(chosen):.2f}-{max(chosen):.2f} (median "
        f"{np.median(chosen):.2f}); of the {len(left)} it leaves, "
        f"{sum(r > 1.1 for r in left)} ran more than 10% faster transposed "
        f"(largest {max(left):.2f}) and {sum(r < 1 / 1.1 for r in left)} more than 10% slower."
    )


if __name__ == "__main__":
    main()
