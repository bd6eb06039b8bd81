"""Matrix-product layouts for the compiled population (``functional_population(...,
compile=True)``).

Under ``vmap`` a linear layer of the K + 1 parameter sets becomes a batched product (``bmm``)
of the shared input with each set's weights. Where that product's output is *thin*, few
columns and many rows (e.g. 10 classes for a batch of 64), torch's CPU kernels (MKL) run it
far below their speed: they vectorize along the output's rows, and 10 floats fill less than
one AVX-512 register. This Inductor pass (after autograd, before lowering) computes such a
product transposed, ``(b^T a^T)^T``, whose output rows are long (:func:`thin` says which).

The rewrite is exact algebra; the results differ from the unrewritten graph's only in
rounding (the order of a dot product's additions inside the BLAS kernel). Only float32 CPU
products with static shapes are touched. The rule comes from a measurement on this project's
CPU at one thread (``python -m benchmarks.product_layout``, recorded in
``benchmarks/README.md``): every float32 product it picks ran faster transposed. float64
follows another pattern (mostly faster transposed at 4-10 columns, slower in places at 1 and
at 15) and bfloat16 ran mostly slower transposed, so both are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__: list[str] = []

_ATEN = torch.ops.aten
_THIN = 16  # an output narrower than this (floats per AVX-512 register) is thin ...
_TALL = 64  # ... where it has at least this many rows ...
_NARROW = 8  # ... and, below this many columns, at least _THIN products in the batch


def thin(shape: Sequence[Any], dtype: torch.dtype) -> bool:
    """Whether a CPU ``bmm`` with output ``shape`` ``(B, M, N)`` runs faster transposed: float32,
    static sizes, ``N < 16``, ``M >= 64``, and ``B >= 16`` where ``N < 8`` (where the
    measurement found it faster in every case; ``python -m benchmarks.product_layout``)."""
    if dtype != torch.float32 or not all(type(s) is int for s in shape):
        return False
    batch, m, n = shape
    return n < _THIN and m >= _TALL and (n >= _NARROW or batch >= _THIN)


def _add(graph: torch.fx.Graph, op: Any, *args: Any) -> torch.fx.Node:
    """A new node ``op(*args)`` before the current insertion point, with its fake value (what
    later passes and the lowering read) computed from its inputs' fake values."""
    node = graph.call_function(op, args)
    values = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    node.meta["val"] = op(*values)
    return node


def rewrite_products(graph: torch.fx.Graph) -> int:
    """Compute every thin CPU ``bmm`` of ``graph`` (see :func:`thin`) transposed, in place;
    the number of products rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _ATEN.bmm.default:
            continue
        value = node.meta.get("val")
        if value is None or value.device.type != "cpu" or not thin(value.shape, value.dtype):
            continue
        a, b = node.args
        swap = [0, 2, 1]
        with graph.inserting_before(node):
            at = _add(graph, _ATEN.permute.default, a, swap)
            bt = _add(graph, _ATEN.permute.default, b, swap)
            new = _add(graph, _ATEN.permute.default, _add(graph, _ATEN.bmm.default, bt, at), swap)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


class ProductLayouts(CustomGraphPass):
    """:func:`rewrite_products` as an Inductor post-grad pass, run after ``other`` (the pass
    that was configured before, if any). Its ``uuid`` (Inductor's cache key) is the hash of
    this file, combined with ``other``'s."""

    def __init__(self, other: Any = None) -> None:
        self.other = other

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.other is not None:
            self.other(graph)
        rewrite_products(graph)

    def uuid(self) -> Any:
        mine = get_hash_for_files((__file__,))
        if self.other is None:
            return mine
        theirs = getattr(self.other, "uuid", lambda: None)()
        return None if theirs is None else (mine, theirs)  # None: Inductor skips its cache


def compile_options(cpu: bool) -> dict[str, Any]:
    """The compiled population's ``torch.compile`` options: :class:`ProductLayouts` added to
    the configured post-grad passes, and for a model on the CPU Inductor's C++ wrapper (the
    compiled graph's calls made from C++ rather than from generated Python: about 3 us less
    per call on the small MLP of the sampling study, whose compiled evaluation takes about
    0.1 ms; not measured on a GPU, so not used there)."""
    other = torch._inductor.config.post_grad_custom_pre_pass
    return {"post_grad_custom_pre_pass": ProductLayouts(other)} | (
        {"cpp_wrapper": True} if cpu else {}
    )
