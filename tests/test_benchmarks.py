"""Smoke tests of ``python -m benchmarks``: every study's ``--quick`` path writes its JSON
(records, tables, a one-sentence verdict), its PNG plots and its section of the report; the
shared rendering layer works on its own. No timing assertions."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # every study's --quick run: about a minute

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from benchmarks.__main__ import STUDIES, available, main  # noqa: E402
from benchmarks._common import Context, StudyResult, interleaved_medians  # noqa: E402
from benchmarks._report import (  # noqa: E402
    cell,
    curve,
    line_plot,
    markdown_table,
    panel,
    record_curve,
    table,
    write_report,
    write_study,
)

PNG = b"\x89PNG\r\n\x1a\n"
KEYS = {"study", "question", "verdict", "seconds", "settings", "environment", "notes", "tables",
        "figures", "records"}  # fmt: skip


def check_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000


def test_the_report_layer_renders_tables_plots_and_json(tmp_path):
    records = [{"name": "a", "ms": 1.23456, "n": 12345, "ok": True}, {"name": "b", "ms": None}]
    spec = table(records, {"name": "name", "ms / step": "ms:.2f", "count": "n", "ok": "ok",
                           "twice": lambda r: 2 * (r["ms"] or 0)}, "Title")  # fmt: skip
    assert spec["rows"] == [["a", "1.23", "12,345", "yes", "2.47"], ["b", "", "", "", "0"]]
    assert markdown_table(spec).splitlines()[:3] == [
        "**Title**", "", "| name | ms / step | count | ok | twice |"]  # fmt: skip
    plot = line_plot("demo", [curve("x^2", [1, 2, 3], [1, 4, 9], "o-", 0)], "t", yscale="log")
    result = StudyResult("A verdict.", {"runs": records}, tables=[spec], figures=[plot],
                         notes=["a note"])  # fmt: skip
    env = {"started": "now", "quick": True, "versions": {"numpy": "1"},
           "machine": {"cpu": "cpu", "cpu_count": 2, "device": "cpu"}}  # fmt: skip
    record = write_study(tmp_path, "demo", "Does it render?", result, 1.5, env)
    assert json.loads((tmp_path / "demo.json").read_text()) == record
    assert set(record) == KEYS and record["figures"] == ["demo.png"]
    check_png(tmp_path / "demo.png")
    report = write_report(tmp_path, [record], env, missing=["later"]).read_text()
    for text in ("## demo", "**Verdict:** A verdict.", "| a | 1.23 |", "](demo.png)", "- a note",
                 "Not in this checkout: later."):  # fmt: skip
        assert text in report


def test_panels_take_known_options_and_records_style_their_curves():
    spec = panel([], "t", ylabel="y", hlines=[(1.0, "one")])
    assert (spec["xlabel"], spec["ylabel"], spec["hlines"], spec["kind"]) == (
        "step", "y", [[1.0, "one"]], "line")  # fmt: skip
    with pytest.raises(TypeError, match="xlable"):
        panel([], xlable="typo")
    r = {"method": "b", "framework": "jax", "label": "B"}
    c = record_curve(r, [1, 2], [3, 4], ["a", "b"], lw=2)
    assert (c["label"], c["style"], c["color"], c["lw"]) == ("B [jax]", "--", 1, 2)
    unlabelled = record_curve({"method": "a", "framework": "torch"}, [1], [1], ["a"])
    assert (unlabelled["label"], unlabelled["style"], unlabelled["color"]) == ("a [torch]", "-", 0)


def test_cells_format_numbers_and_missing_values():
    assert [cell(None), cell(0.000123456), cell(float("nan")), cell(3), cell(0.5, ".0%")] == [
        "", "0.000123", "diverged", "3", "50%"]  # fmt: skip


def test_quick_and_full_sizes():
    ctx = Context(quick=True, seeds=3, device="cpu", out_dir=None)
    assert ctx.sized(10, 2) == 2 and ctx.seed_list == [0]
    ctx.quick = False
    assert ctx.sized(10, 2) == 10 and ctx.seed_list == [0, 1, 2]


@pytest.mark.parametrize("study", available())
def test_quick_run_writes_json_plots_and_report(study, tmp_path):
    assert main(["--quick", "--only", study, "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    record = json.loads((tmp_path / f"{study}.json").read_text())
    assert set(record) == KEYS and record["study"] == study
    assert record["question"].endswith("?") and record["records"] and record["tables"]
    verdict = record["verdict"]
    assert 20 < len(verdict) <= 320 and "\n" not in verdict and verdict.endswith(".")
    assert f"## {study}" in report and verdict in report
    for t in record["tables"]:
        assert t["rows"] and all(len(row) == len(t["headers"]) for row in t["rows"])
    assert record["figures"]  # every study plots something
    for figure in record["figures"]:
        check_png(tmp_path / figure)
        assert f"]({figure})" in report
    if study == "step_time":  # torch's fused CPU Adam is timed beside ours, by bytes per second
        rows = {r["impl"]: r for r in record["records"]["rows"] if r["framework"] == "torch"}
        assert rows["torch.optim.Adam(fused=True)"]["bytes_per_param"] == 28
        assert all(r["limit_gbs"] > 0 and r["gbs"] > 0 for r in rows.values())


def test_a_listed_study_that_is_not_in_the_checkout_is_reported(tmp_path, monkeypatch):
    import benchmarks.__main__ as runner

    monkeypatch.setattr(runner, "STUDIES", [*STUDIES, "not_here"])
    assert "not_here" not in runner.available()
    assert runner.main(["--quick", "--only", "not_here", "--out", str(tmp_path)]) == 0
    assert "Not in this checkout: not_here." in (tmp_path / "report.md").read_text()


def test_unknown_study_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--only", "no_such_study"])
    assert info.value.code == 2
    assert "unknown study: no_such_study" in capsys.readouterr().err


def test_interleaved_medians_alternates_and_takes_a_timer():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    interleaved_medians(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    seconds = iter([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])

    def timer(fn):
        fn()
        return next(seconds)

    assert interleaved_medians(fns, repeats=3, warmup=0, timer=timer) == {"a": 4.0, "b": 2.0}
