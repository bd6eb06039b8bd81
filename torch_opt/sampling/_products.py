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

A first layer's product is *shared*: one input ``(M, K)``, broadcast over the batch, times
``B`` weights. On AMD CPUs MKL runs float32 products on its AVX2 code (about 100 GFLOP/s on
this project's CPU, an AMD EPYC, at any size) while oneDNN, which torch also ships, runs
AVX-512 (about 225 GFLOP/s). There the pass computes a shared float32 product of at least
2^20 multiply-adds as one oneDNN product of all ``B`` weights with the input,
``(W_1; ...; W_B) x^T`` (:func:`shared`; the same measurement's second table: every product
the rule picks ran 1.4x or more faster). It runs before the thin rule, which then sees the
products that are left. It is off elsewhere (not measured on other CPUs), where
``torch.backends.mkldnn`` is unavailable or disabled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__: list[str] = []

_ATEN = torch.ops.aten
_THIN = 16  # an output narrower than this (floats per AVX-512 register) is thin ...
_TALL = 64  # ... where it has at least this many rows ...
_NARROW = 8  # ... and, below this many columns, at least _THIN products in the batch
_SHARED = 1 << 20  # multiply-adds from which a shared product goes to oneDNN (AMD CPUs)

# ``twinopt::onednn_linear(input, weight)``: ``input @ weight^T`` by oneDNN, float32, on the
# CPU; an op of its own so that the compiled graph calls it like any other kernel (Inductor
# lowers torch's own oneDNN linear only for frozen, constant weights).
_LIB = torch.library.Library("twinopt", "FRAGMENT")
_LIB.define("onednn_linear(Tensor input, Tensor weight) -> Tensor")


def _onednn_linear(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    linear = torch.ops.mkldnn._linear_pointwise.default
    return linear(input.contiguous(), weight.contiguous(), None, "none", [], "")


def _onednn_linear_shape(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return input.new_empty((input.shape[0], weight.shape[0]))


_LIB.impl("onednn_linear", _onednn_linear, "CPU")
torch.library.register_fake("twinopt::onednn_linear", _onednn_linear_shape, lib=_LIB)
onednn_linear = torch.ops.twinopt.onednn_linear.default


def thin(shape: Sequence[Any], dtype: torch.dtype) -> bool:
    """Whether a CPU ``bmm`` with output ``shape`` ``(B, M, N)`` runs faster transposed: float32,
    static sizes, ``N < 16``, ``M >= 64``, and ``B >= 16`` where ``N < 8`` (where the
    measurement found it faster in every case; ``python -m benchmarks.product_layout``)."""
    if dtype != torch.float32 or not all(type(s) is int for s in shape):
        return False
    batch, m, n = shape
    return n < _THIN and m >= _TALL and (n >= _NARROW or batch >= _THIN)


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor (``/proc/cpuinfo``'s ``vendor_id``, e.g. ``"AuthenticAMD"``); ``""``
    where there is no such file (not Linux) or line (not x86)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def onednn_products() -> bool:
    """Whether the pass sends shared products to oneDNN in this process: an AMD CPU (where it
    was measured) with torch's oneDNN available and enabled (``torch.backends.mkldnn``)."""
    mkldnn = torch.backends.mkldnn
    return mkldnn.is_available() and bool(mkldnn.enabled) and cpu_vendor() == "AuthenticAMD"


def shared(shape: Sequence[Any], dtype: torch.dtype) -> bool:
    """Whether a CPU product of one ``(M, K)`` input with ``B`` weights ``(K, N)``, ``shape``
    ``(B, M, K, N)``, runs faster as one oneDNN product where :func:`onednn_products` holds:
    float32, static sizes, at least 2^20 multiply-adds (``python -m
    benchmarks.product_layout``)."""
    if dtype != torch.float32 or not all(type(s) is int for s in shape):
        return False
    batch, m, k, n = shape
    return batch * m * k * n >= _SHARED


def _add(graph: torch.fx.Graph, op: Any, *args: Any) -> torch.fx.Node:
    """A new node ``op(*args)`` before the current insertion point, with its fake value (what
    later passes and the lowering read) computed from its inputs' fake values."""
    node = graph.call_function(op, args)
    values = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    node.meta["val"] = op(*values)
    return node


def _shared_input(node: torch.fx.Node) -> torch.fx.Node | None:
    """The ``(M, K)`` input of a CPU ``bmm`` node whose first operand is that input broadcast
    over the batch (``expand`` of ``(M, K)`` or ``(1, M, K)``) and whose second is a batch of
    transposed contiguous weights, as ``vmap`` makes of a linear layer; else ``None``."""
    a, b = node.args
    value = node.meta.get("val")
    if value is None or value.device.type != "cpu" or not isinstance(a, torch.fx.Node):
        return None
    if a.target is not _ATEN.expand.default or not isinstance(b, torch.fx.Node):
        return None
    source, weights = a.args[0].meta.get("val"), b.meta.get("val")
    if source is None or weights is None or not weights.mT.is_contiguous():
        return None
    if source.dim() == 3 and source.shape[0] == 1:
        source = source[0]
    if source.dim() != 2 or tuple(source.shape) != tuple(a.meta["val"].shape[1:]):
        return None  # an input broadcast along its own rows or columns too
    return a.args[0]


def rewrite_shared(graph: torch.fx.Graph) -> int:
    """Compute every shared CPU product of ``graph`` (see :func:`shared`) as one oneDNN
    product, in place; the number of products rewritten. The caller checks
    :func:`onednn_products`."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _ATEN.bmm.default:
            continue
        source = _shared_input(node)
        if source is None:
            continue
        batch, m, n = node.meta["val"].shape
        k = node.args[0].meta["val"].shape[2]
        if not shared((batch, m, k, n), node.meta["val"].dtype):
            continue
        with graph.inserting_before(node):
            x = source
            if len(source.meta["val"].shape) == 3:
                x = _add(graph, _ATEN.squeeze.dim, source, 0)
            w = _add(graph, _ATEN.permute.default, node.args[1], [0, 2, 1])  # (B, N, K)
            w = _add(graph, _ATEN.view.default, w, [batch * n, k])
            out = _add(graph, onednn_linear, w, x)  # (B * N, M): every product, transposed
            out = _add(graph, _ATEN.view.default, out, [batch, n, m])
            new = _add(graph, _ATEN.permute.default, out, [0, 2, 1])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


def rewrite_thin(graph: torch.fx.Graph) -> int:
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


def rewrite_products(graph: torch.fx.Graph) -> int:
    """The pass: :func:`rewrite_shared` where :func:`onednn_products` holds, then
    :func:`rewrite_thin` on the products left; the number of products rewritten."""
    return (rewrite_shared(graph) if onednn_products() else 0) + rewrite_thin(graph)


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
        # whether shared products go to oneDNN is this process's choice, not the file's
        mine = get_hash_for_files((__file__,)) + (b"1" if onednn_products() else b"0")
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
