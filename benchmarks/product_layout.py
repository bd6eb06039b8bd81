"""Which layout and which library run a CPU batched product fastest? A measurement, not a
study; ``python -m benchmarks.product_layout`` prints two tables and how the compiled
population's pass (``torch_opt/sampling/_products.py``) reads them. benchmarks/README.md
records a run. One thread; the compared calls alternate call by call; medians after warm-up.

1. Thin products. ``torch.bmm(a, b)`` against the same product computed transposed,
   ``torch.bmm(b^T, a^T)^T``, for ``a`` of shape ``(B, M, 64)`` and ``b`` a transposed weight
   ``(B, N, 64)^T`` (what a linear layer of ``B`` parameter sets becomes under ``vmap``), over
   float32, float64 and bfloat16, ``B`` in {5, 17, 65}, ``M`` (rows of the output) in
   {32, 64, 256} and ``N`` (columns) in {1, 4, 8, 10, 15, 16, 32}. Each cell is plain /
   transposed (above 1: the transposed product is faster); ``*`` marks the products that the
   pass computes transposed (``thin``).
2. Shared products (where torch has oneDNN). One float32 input ``x`` ``(M, K)`` broadcast over
   ``B`` weights ``(N, K)`` (a first layer under ``vmap``): the faster of the two MKL ``bmm``
   layouts above against one ``twinopt::onednn_linear`` of all the weights with ``x``, for
   ``B`` in {5, 17, 65}, ``M`` and ``K`` in {16, 64, 256}, ``N`` in {1, 4, 10, 32, 128}. Each
   cell is MKL / oneDNN (above 1: oneDNN is faster); ``*`` marks the products the pass sends to
   oneDNN (``shared``) on a CPU where it does so (``onednn_products``: AMD).
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
SHARED_SIZES = (16, 64, 256)  # M and K of a shared product
SHARED_COLUMNS = (1, 4, 10, 32, 128)


def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median time of ``bmm(a, b)`` over that of ``bmm(b^T, a^T)^T``, the calls alternating."""
    t = interleaved_medians(
        {"plain": lambda: torch.bmm(a, b), "transposed": lambda: torch.bmm(b.mT, a.mT).mT},
        REPEATS,
    )
    return t["plain"] / t["transposed"]


def shared_ratio(x: torch.Tensor, w: torch.Tensor) -> float:
    """Median time of the faster MKL layout of ``bmm(x broadcast, w^T)`` over that of one
    oneDNN product, the calls alternating."""
    from torch_opt.sampling._products import onednn_linear

    batch, n, k = w.shape
    xs, flat = x.expand(batch, *x.shape), w.view(batch * n, k)
    t = interleaved_medians(
        {
            "plain": lambda: torch.bmm(xs, w.mT),
            "transposed": lambda: torch.bmm(w, xs.mT).mT,
            "onednn": lambda: onednn_linear(flat, x),
        },
        REPEATS,
    )
    return min(t["plain"], t["transposed"]) / t["onednn"]


def summary(chosen: list[float], left: list[float], what: str, faster: str) -> str:
    """How the rule's picks and the products it leaves ran, in one sentence."""
    return (
        f"The rule {what} {len(chosen)} of {len(chosen) + len(left)} products: "
        f"{min(chosen):.2f}-{max(chosen):.2f} (median {np.median(chosen):.2f}); of the "
        f"{len(left)} it leaves, {sum(r > 1.1 for r in left)} ran more than 10% faster "
        f"{faster} (largest {max(left):.2f}) and {sum(r < 1 / 1.1 for r in left)} more than 10% "
        "slower."
    )


def thin_table(gen: torch.Generator) -> None:
    from torch_opt.sampling._products import thin

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
    print("\n" + summary(chosen, left, "transposes", "transposed") + " (plain / transposed)")


def shared_table(gen: torch.Generator) -> None:
    from torch_opt.sampling._products import cpu_vendor, onednn_products, shared

    rows, chosen, left = [], [], []
    for batch in BATCHES:
        for m in SHARED_SIZES:
            for k in SHARED_SIZES:
                cells = []
                for n in SHARED_COLUMNS:
                    x = torch.randn(m, k, generator=gen)
                    r = shared_ratio(x, torch.randn(batch, n, k, generator=gen))
                    picked = shared((batch, m, k, n), torch.float32)
                    (chosen if picked else left).append(r)
                    cells.append(f"{r:.2f}{'*' if picked else ''}")
                rows.append([batch, m, k, *cells])
    print(markdown_table(["B", "M", "K", *(f"N={n}" for n in SHARED_COLUMNS)], rows))
    where = "uses it" if onednn_products() else "does not use it"
    print(
        "\n"
        + summary(chosen, left, "sends to oneDNN", "with oneDNN")
        + f" (MKL / oneDNN). CPU vendor {cpu_vendor()!r}: the pass {where} in this process."
    )


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    thin_table(gen)
    if torch.backends.mkldnn.is_available():
        print()
        shared_table(gen)


if __name__ == "__main__":
    main()
