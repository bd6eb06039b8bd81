"""The core's house rules: public APIs only, a light import, honest version floors."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ["torch_opt", "jax_opt", "twinopt"]
COMPAT = ROOT / "torch_opt" / "_compat.py"

# Dotted prefixes no library module may read (torch._foreach_* is the public foreach API).
BANNED = (
    "torch._",
    "torch.optim.optimizer._",
    "torch.fx.experimental",
    "jax._src",
    "optax._src",
)


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _optimizer_private_names() -> set[str]:
    """The private attributes of ``torch.optim.Optimizer`` (class and instance)."""
    import torch

    names = {n for n in vars(torch.optim.Optimizer) if n.startswith("_") and not n.startswith("__")}
    sample = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    names |= {n for n in vars(sample) if n.startswith("_")}
    return names


def private_uses(source: str, private_members: set[str] = frozenset()) -> list[str]:
    """Every private name of torch, jax or optax that ``source`` reads: banned dotted names
    (``torch._dynamo``, ``from torch.optim.optimizer import _x``, ...), ``Optimizer._x`` and
    ``self._x`` for a private member of torch's ``Optimizer``."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted:
                names.append(dotted)
            if node.attr in private_members and _dotted(node.value) in ("self", "Optimizer"):
                found.append(f"{_dotted(node.value)}.{node.attr}")
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("torch._foreach_"):
                continue
            if any(name == b.rstrip(".") or name.startswith(b) for b in BANNED):
                found.append(name)
    return sorted(set(found))


def test_the_private_name_check_finds_what_it_looks_for():
    snippet = textwrap.dedent(
        """
        import torch._dynamo
        from torch.optim.optimizer import _get_scalar_dtype, Optimizer
        from torch.fx.experimental.proxy_tensor import make_fx
        from jax._src import core
        import optax._src.base as b
        x = torch._inductor.config
        y = Optimizer._group_tensors_by_device_and_dtype
        z = self._optimizer_step_pre_hooks
        ok = torch._foreach_add_
        fine = self._my_own_thing
        """
    )
    found = private_uses(snippet, _optimizer_private_names())
    assert found == sorted(
        {
            "torch._dynamo",
            "torch._inductor",
            "torch._inductor.config",
            "torch.optim.optimizer._get_scalar_dtype",
            "torch.fx.experimental.proxy_tensor",
            "torch.fx.experimental.proxy_tensor.make_fx",
            "jax._src",
            "jax._src.core",
            "optax._src.base",
            "Optimizer._group_tensors_by_device_and_dtype",
            "self._optimizer_step_pre_hooks",
        }
    )


def test_the_library_uses_public_apis_only_outside_compat():
    pytest.importorskip("torch")
    members = _optimizer_private_names()
    offenders = {}
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == COMPAT:
                continue
            uses = private_uses(path.read_text(), members)
            if uses:
                offenders[str(path.relative_to(ROOT))] = uses
    assert offenders == {}


def test_compat_gives_each_private_use_a_public_fallback(monkeypatch):
    torch = pytest.importorskip("torch")
    import torch.optim.optimizer as optimizer_module

    from torch_opt import _compat

    params = [torch.zeros(2), torch.nn.Parameter(torch.zeros(2))]
    assert _compat.foreach_supported(params)
    monkeypatch.delattr(optimizer_module, "_foreach_supported_types")
    assert _compat.foreach_supported(params)  # the fallback

    class Odd(torch.Tensor):
        pass

    assert not _compat.foreach_supported([torch.zeros(2).as_subclass(Odd)])


def _new_modules(before: str, after: str) -> list[str]:
    """The modules ``import <after>`` loads in a fresh interpreter that has run
    ``import <before>``."""
    code = (
        f"import sys; {before}; seen = set(sys.modules); import {after}; "
        "print('\\n'.join(sorted(set(sys.modules) - seen)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.split()


def _outside(modules: list[str], allowed: tuple[str, ...]) -> list[str]:
    stdlib = sys.stdlib_module_names
    return [
        m
        for m in modules
        if m.split(".")[0] not in stdlib
        and not any(m == a or m.startswith(a + ".") for a in allowed)
    ]


@pytest.mark.slow
def test_importing_torch_opt_loads_neither_dynamo_nor_inductor():
    pytest.importorskip("torch")
    new = _new_modules("import torch", "torch_opt")
    assert [m for m in new if m.startswith(("torch._dynamo", "torch._inductor"))] == []
    assert _outside(new, ("torch", "torch_opt", "twinopt")) == []
    assert "torch_opt.amos" in new  # the check looked at a real import


@pytest.mark.slow
def test_importing_jax_opt_loads_nothing_beyond_jax_and_optax():
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    new = _new_modules("import jax, optax", "jax_opt")
    assert _outside(new, ("jax", "jaxlib", "optax", "numpy", "jax_opt", "twinopt")) == []
    assert "jax_opt.amos" in new


def test_the_version_floors_admit_the_apis_the_code_uses():
    """pyproject's floors are at least the releases that brought what the code calls."""
    text = (ROOT / "pyproject.toml").read_text()

    def floor(name: str) -> tuple[int, ...]:
        found = re.search(rf'"{name}>=([0-9.]+)"', text)
        assert found, name
        return tuple(int(x) for x in found.group(1).split("."))

    # torch.library.custom_op / register_fake: 2.4; named parameters in torch.optim
    # (param_names in groups, used by the error paths): 2.6.
    assert floor("torch") >= (2, 6)
    assert floor("optax") >= (0, 2, 5)  # optax.tree.*
    assert floor("jax") >= (0, 4, 27)  # optax 0.2.5's own floor; jax.tree.* (0.4.25)
