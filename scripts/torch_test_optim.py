"""Run PyTorch's own optimizer suite (``TestOptimRenewed``) on twinopt's drop-ins, on the CPU.

Usage::

    python scripts/torch_test_optim.py PATH/TO/test_optim.py [-k EXPR] [--verbose]

``PATH/TO/test_optim.py`` is ``test/test_optim.py`` of a PyTorch checkout at the tag of the
installed torch (``python -c "import torch; print(torch.__version__)"``; e.g. the file at tag
``v2.13.0`` of github.com/pytorch/pytorch). The torch wheel does not ship it, and it is not
kept in this repository; the harness it uses (``torch.testing._internal.common_optimizers``
and friends) does ship in the wheel. No network is needed.

The script loads the file as a module, with:

- its sibling imports (``optim.test_lrscheduler``, ``optim.test_optim``,
  ``optim.test_swa_utils``, other suites it only re-exports) stubbed by empty classes;
- ``common_optimizers.optim_db`` replaced, before the file's ``@optims(optim_db)`` decorators
  read it, by torch's entry for ``torch.optim.RMSprop`` (the reference column) and the entries
  of ``tests/torch_opt/optim_infos.py`` (RMSpropODE, Amos, LossTiedODE);
- the device-type tests instantiated for the CPU only (``PYTORCH_TESTING_DEVICE_ONLY_FOR``).

It runs every ``TestOptimRenewed`` test (those whose name contains ``EXPR`` with ``-k``; ``*``
and ``?`` are wildcards) and prints a table, one row per test and parametrization, one column
per optimizer: ``pass``, ``FAIL``, ``ERROR``, ``skip`` (CUDA-only tests and the like), ``n/a``
(the test hard-codes torch's own classes; the entry in ``optim_infos.py`` says why) and ``-``
(the test is not generated for that optimizer: e.g. ``foreach`` tests for a class without
``foreach``). Every FAIL, ERROR, skip and n/a is listed below the table with the first line of
its message. The exit status is 1 when any twinopt column has a FAIL or ERROR where RMSprop's
column passes, 2 when no test matches ``EXPR``, else 0.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import re
import sys
import time
import types
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("RMSprop", "RMSpropODE", "Amos", "LossTiedODE")
REFERENCE = "RMSprop"
# Modules test_optim.py imports only to re-export their suites, with the names it takes.
SIBLINGS = {
    "optim.test_lrscheduler": ("TestLRScheduler",),
    "optim.test_optim": ("TestDifferentiableOptimizer",),
    "optim.test_swa_utils": ("TestSWAUtils",),
}
SUITE = "TestOptimRenewed"
NA_PREFIX = "n/a: "


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run torch's TestOptimRenewed on twinopt's optimizers (CPU).",
        epilog="test_optim.py: test/test_optim.py of a PyTorch checkout at the installed "
        "torch's tag (the torch wheel does not ship it).",
    )
    parser.add_argument("path", type=Path, help="torch's test/test_optim.py")
    parser.add_argument(
        "-k",
        dest="pattern",
        default=None,
        help="run only the tests whose name contains this (* and ? are wildcards)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each test as it ends")
    return parser.parse_args(argv)


def stub_siblings() -> None:
    """Empty modules for the sibling suites the file imports (they are not TestCase classes,
    so unittest collects nothing from them)."""
    package = sys.modules.setdefault("optim", types.ModuleType("optim"))
    package.__path__ = []  # a package, so "optim.x" imports resolve to the stubs below
    for name, classes in SIBLINGS.items():
        module = types.ModuleType(name)
        for cls in classes:
            setattr(module, cls, type(cls, (), {"__doc__": "stub: not part of this run"}))
        sys.modules[name] = module
        setattr(package, name.rsplit(".", 1)[1], module)


def install_optim_db() -> list:
    """Replace torch's optim_db, in place and as the module attribute, by RMSprop's entry and
    ours; return the entries."""
    import torch.testing._internal.common_optimizers as common_optimizers

    from tests.torch_opt.optim_infos import TORCH_RMSPROP_INFO, TWINOPT_OPTIM_DB

    entries = [TORCH_RMSPROP_INFO, *TWINOPT_OPTIM_DB]
    names = [info.name for info in entries]
    assert tuple(names) == COLUMNS, names
    common_optimizers.optim_db[:] = entries
    return entries


def load_suite(path: Path) -> type:
    """Execute torch's test file as a module and return its CPU test class."""
    spec = importlib.util.spec_from_file_location("torch_suite_test_optim", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, f"{SUITE}CPU", None)
    if cls is None:
        raise SystemExit(f"{path} defines no {SUITE}CPU (is it torch's test/test_optim.py?)")
    return cls


def first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(err) -> str:
    exc_type, exc, _ = err
    return f"{exc_type.__name__}: {first_line(exc)}"


class Recorder(unittest.TestResult):
    """Records each test's outcome as (status, message)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.verbose = verbose

    def _set(self, test, status: str, message: str = "") -> None:
        name = test._testMethodName
        self.outcomes[name] = (status, message)
        if self.verbose:
            print(f"{status:5} {name} {message}", flush=True)  # noqa: T201

    def addSuccess(self, test):
        self._set(test, "pass")

    def addFailure(self, test, err):
        self._set(test, "FAIL", describe(err))

    def addError(self, test, err):
        self._set(test, "ERROR", describe(err))

    def addSkip(self, test, reason):
        if reason.startswith(NA_PREFIX):
            self._set(test, "n/a", reason[len(NA_PREFIX) :])
        else:
            self._set(test, "skip", first_line(reason))

    def addExpectedFailure(self, test, err):
        self._set(test, "xfail", describe(err))

    def addUnexpectedSuccess(self, test):
        self._set(test, "XPASS", "expected to fail, passed")

    def addSubTest(self, test, subtest, err):
        if err is not None:  # the first failing subtest decides
            kind = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
            name = test._testMethodName
            if name not in self.outcomes:
                self.outcomes[name] = (kind, f"{subtest._subDescription()}: {describe(err)}")


NAME = re.compile(
    r"^(?P<test>.+?)_(?P<optim>" + "|".join(sorted(COLUMNS, key=len, reverse=True)) + r")"
    r"_cpu(?:_(?P<dtype>[a-z0-9]+))?$"
)


def split_name(method: str) -> tuple[str, str | None]:
    """``test_x_params_Optim_cpu_dtype`` -> (``test_x_params [dtype]``, ``Optim``); a test not
    parametrized by optimizer -> (its name, None)."""
    m = NAME.match(method)
    if m is None:
        return re.sub(r"_cpu(?:_[a-z0-9]+)?$", "", method), None
    row = m["test"] + (f" [{m['dtype']}]" if m["dtype"] else "")
    return row, m["optim"]


def collect(cls: type, pattern: str | None) -> unittest.TestSuite:
    names = unittest.TestLoader().getTestCaseNames(cls)
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, glob)]
    return unittest.TestSuite(cls(n) for n in names)


def table(outcomes: dict[str, tuple[str, str]]) -> tuple[str, list[str], bool]:
    """The table, the notes it refers to, and whether a twinopt column fails where RMSprop
    passes."""
    rows: dict[str, dict[str, tuple[str, str]]] = {}
    single: dict[str, tuple[str, str]] = {}
    for method, outcome in outcomes.items():
        row, optim = split_name(method)
        if optim is None:
            single[row] = outcome
        else:
            rows.setdefault(row, {})[optim] = outcome
    notes: list[str] = []
    numbers: dict[tuple[str, str], int] = {}  # one note per distinct status and message
    regressions = False
    columns = [c for c in COLUMNS if any(c in row for row in rows.values())]  # those run
    lines = [
        "| test | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in sorted(rows):
        cells = []
        for col in columns:
            status, message = rows[row].get(col, ("-", ""))
            if status in ("FAIL", "ERROR") and col != REFERENCE:
                if rows[row].get(REFERENCE, ("-",))[0] in ("pass", "-"):
                    regressions = True
            if status in ("pass", "-"):
                cells.append(status)
                continue
            if (status, message) not in numbers:
                numbers[status, message] = len(numbers) + 1
                notes.append(f"[{numbers[status, message]}] {status}: {message}")
            cells.append(f"{status} [{numbers[status, message]}]")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for row in sorted(single):
        status, message = single[row]
        notes.append(f"(not per optimizer) {row}: {status}" + (f": {message}" if message else ""))
    return "\n".join(lines), notes, regressions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.path.is_file():
        raise SystemExit(
            f"{args.path}: no such file. Get test/test_optim.py from a PyTorch checkout at the "
            "installed torch's tag (the torch wheel does not ship it)."
        )
    # torch's test utilities read sys.argv at import; they must not see this script's flags.
    sys.argv = [sys.argv[0]]
    os.environ["PYTORCH_TESTING_DEVICE_ONLY_FOR"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import torch

    stub_siblings()
    install_optim_db()
    cls = load_suite(args.path)
    suite = collect(cls, args.pattern)
    if suite.countTestCases() == 0:
        print(f"no test of {SUITE} matches {args.pattern!r}")  # noqa: T201
        return 2
    print(  # noqa: T201
        f"torch {torch.__version__}: {suite.countTestCases()} tests of {SUITE} from {args.path}",
        flush=True,
    )
    start = time.perf_counter()
    result = Recorder(args.verbose)
    suite.run(result)
    text, notes, regressions = table(result.outcomes)
    print(text)  # noqa: T201
    if notes:
        print("\n" + "\n".join(notes))  # noqa: T201
    counts: dict[str, int] = {}
    for status, _ in result.outcomes.values():
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"\n{summary} ({time.perf_counter() - start:.0f} s)")  # noqa: T201
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
