"""Smoke test of the main job: ``python -m benchmarks --quick`` writes its report, one JSON per
study with the agreed fields, and non-empty PNG plots. No timing assertions."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")
jsonschema = pytest.importorskip("jsonschema")

from benchmarks.__main__ import STUDIES, main  # noqa: E402
from benchmarks._common import RESULT_SCHEMA  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_schema_rejects_a_broken_record():
    record = {"study": "x", "question": "no question mark", "verdict": "v", "seconds": 1.0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, RESULT_SCHEMA)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_quick_run_writes_report_json_and_plots(study, tmp_path):
    assert main(["--quick", "--only", study, "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    record = json.loads((tmp_path / f"{study}.json").read_text())
    assert f"## {study}" in report and record["verdict"] in report
    jsonschema.validate(record, RESULT_SCHEMA)
    assert record["study"] == study
    assert record["environment"]["versions"]["numpy"] != "not installed"
    assert record["figures"]  # every study plots something
    for figure in record["figures"]:
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"]({figure})" in report


def test_unknown_study_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--only", "no_such_study"])
    assert info.value.code == 2
    assert "unknown study: no_such_study" in capsys.readouterr().err


def test_interleaved_medians_alternates_blocks_of_calls():
    """``block``/``block_warmup``: each turn runs a function's untimed then timed calls back to
    back, the functions' turns alternating; the default is one timed call per turn."""
    from benchmarks._common import interleaved_medians

    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_medians(fns, repeats=2, warmup=1, block=3, block_warmup=2)
    assert calls == ["a", "b"] + (["a"] * 5 + ["b"] * 5) * 2
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    calls.clear()
    interleaved_medians(fns, repeats=3, warmup=0)
    assert calls == ["a", "b"] * 3


def test_interleaved_medians_takes_a_timer():
    """A ``timer`` times each timed call (the medians are of its values; warm-up calls are not
    timed), and torch work on a GPU is timed with CUDA events, elsewhere by the host's clock."""
    from benchmarks._common import cuda_event_timer, interleaved_medians, torch_timer

    seconds = iter([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])
    timed = []

    def timer(fn):
        fn()
        timed.append(fn)
        return next(seconds)

    fns = {"a": lambda: "a", "b": lambda: "b"}
    times = interleaved_medians(fns, repeats=3, warmup=2, timer=timer)
    assert times == {"a": 4.0, "b": 2.0}  # a: 5, 3, 4; b: 1, 2, 6
    assert [fn() for fn in timed] == ["a", "b"] * 3
    assert torch_timer("cuda") is cuda_event_timer and torch_timer("cuda:1") is cuda_event_timer
    assert torch_timer("cpu") is None


def test_step_time_times_torchs_fused_path_beside_the_foreach_one():
    """On request (by default on a GPU) the torch rows include torch.optim.Adam(fused=True),
    counted at Adam's 28 bytes per parameter; on the CPU by default they do not."""
    from benchmarks import step_time

    sets = {"2 x (8x8)": [(8, 8)] * 2}
    rows = step_time.torch_rows(sets, 2, "cpu", None, fused=True)
    fused = [r for r in rows if r["impl"] == step_time.FUSED]
    assert len(fused) == 1 and fused[0]["ms"] > 0
    assert step_time.BYTES_PER_PARAM[step_time.form(step_time.FUSED)] == 28
    assert step_time.FUSED not in {r["impl"] for r in step_time.torch_rows(sets, 2, "cpu", None)}
