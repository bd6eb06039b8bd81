"""The README's Python examples run as written, and print what their comments say."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
pytest.importorskip("scipy")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def expected_prints(block: str) -> list[str]:
    """A ``print(...)  # text`` line claims that it prints ``text``."""
    return re.findall(r"^print\(.*\)  # (.*)$", block, flags=re.M)


def test_readme_examples_run_and_print_what_they_claim():
    namespace: dict = {}
    assert len(blocks()) >= 4
    assert sum(len(expected_prints(b)) for b in blocks()) >= 5
    for block in blocks():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        printed = out.getvalue().splitlines()
        for claim in expected_prints(block):
            assert claim in printed, (claim, printed)
