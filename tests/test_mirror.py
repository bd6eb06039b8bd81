"""torch_opt and jax_opt mirror each other: the same stems, public names, kernel signatures and
docstring math."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

from tests.backends import available

pytestmark = pytest.mark.skipif(
    not (available("torch") and available("jax")), reason="the mirror needs both packages"
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each framework's shells: a torch_opt name -> the jax_opt names that play its part.
SHELLS = {
    "RMSpropODE": ("rmsprop_ode", "scale_by_rmsprop_ode"),
    "LossTiedODE": ("loss_tied_ode", "scale_by_loss_tied_ode"),
    "Flooding": ("flooded", "flood_gradients"),
    "gradient_norm_penalty": ("penalized",),
    "FiniteDifferencePenalty": ("finite_difference_penalty",),
    "Amos": ("amos", "scale_by_amos"),
    "AmosDecayScheduler": ("amos_decay_schedules",),
    "SuAmosSchedule": ("su_amos_schedule",),
    # MGS.step(population=functional_population(...)) is mgs's vmap over the candidates;
    # the ask/tell pair serves custom JAX loops (torch: a closure or a population function).
    "MGS": ("mgs", "mgs_ask", "mgs_tell", "MGSAsk"),
    "functional_population": (),
}


def public(package: str) -> set[str]:
    return set(importlib.import_module(package).__all__) - {"__version__"}


def stems(folder: str, prefix: str = "") -> set[str]:
    """The public modules of ``folder``: ``name.py`` files and ``name/`` subpackages."""
    root = ROOT / folder
    files = {p.stem for p in root.glob(f"{prefix}*.py")}
    packages = {p.parent.name for p in root.glob(f"{prefix}*/__init__.py")}
    return {
        name.removeprefix(prefix)
        for name in files | packages
        if not name.startswith("_") and name != "__init__"
    }


def test_every_stem_has_its_twins():
    algorithms = stems("torch_opt")
    assert algorithms == stems("jax_opt")
    assert algorithms <= stems("tests/reference")
    assert algorithms <= stems("tests/equations", "test_")


@pytest.mark.parametrize("stem", sorted(stems("torch_opt")))
def test_subpackages_split_the_same_way(stem):
    """A module that grew into a subpackage did so in both trees, with the same modules."""
    assert stems(f"torch_opt/{stem}") == stems(f"jax_opt/{stem}")


def shared_names(package: str) -> set[str]:
    """The public names that must exist in both packages: all but the shells (and optax
    state classes)."""
    shells = set(SHELLS) | {name for names in SHELLS.values() for name in names}
    return {n for n in public(package) - shells if not re.fullmatch(r"\w+State", n)}


def kernels() -> set[str]:
    return shared_names("torch_opt") & shared_names("jax_opt")


def test_public_names_correspond():
    assert shared_names("torch_opt") == shared_names("jax_opt"), "a name lacks its twin"
    for torch_name, jax_names in SHELLS.items():
        assert torch_name in public("torch_opt")
        assert set(jax_names) <= public("jax_opt")


@pytest.mark.parametrize(
    "name", sorted(kernels()) if available("torch") and available("jax") else []
)
def test_kernel_signatures_match(name):
    import jax_opt
    import torch_opt

    t, j = getattr(torch_opt, name), getattr(jax_opt, name)
    if callable(t):
        params = [(p.name, p.kind, p.default) for p in inspect.signature(t).parameters.values()]
        assert params == [
            (p.name, p.kind, p.default) for p in inspect.signature(j).parameters.values()
        ]
    else:
        assert t == j


def math_blocks(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    return re.findall(r"\.\. math::\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")


@pytest.mark.parametrize("stem", sorted(stems("torch_opt")))
def test_docstring_math_is_identical(stem):
    t = importlib.import_module(f"torch_opt.{stem}")
    j = importlib.import_module(f"jax_opt.{stem}")
    assert math_blocks(t) and math_blocks(t) == math_blocks(j)
    for name in sorted(kernels()):
        if hasattr(t, name) and callable(getattr(t, name)):
            assert math_blocks(getattr(t, name)) == math_blocks(getattr(j, name)), name
