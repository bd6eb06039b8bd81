"""``python -m benchmarks``: run the benchmark studies and write a report.

Each study answers one question of benchmarks.md on built-in toy problems (no downloads) and
runs every framework installed. A run writes ``benchmarks/results/<timestamp>/`` (or
``--out``): ``report.md`` with every table and plot, one JSON per study (settings, machine,
library versions, raw results) and the PNG plots, and prints a summary table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks._common import Context, StudyResult, machine, markdown_table, versions

# Studies in the order they run; each module has NAME, QUESTION and run(ctx) -> StudyResult.
STUDIES = {
    "ode_tracking": "benchmarks.ode_tracking",
    "loss_tied": "benchmarks.loss_tied",
    "convergence": "benchmarks.convergence",
    "amos_mlp": "benchmarks.amos_mlp",
    "flooding": "benchmarks.flooding",
    "penalty": "benchmarks.penalty",
    "sampling": "benchmarks.sampling",
    "step_time": "benchmarks.step_time",
}
# benchmarks.md studies whose algorithms have not landed yet (the report says so).
PENDING: dict[str, str] = {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes, a smoke run")
    parser.add_argument("--only", default="", help="comma-separated study names")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for noisy studies")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU exists")
    parser.add_argument(
        "--out", default=None, help="output folder (default: a new benchmarks/results/<timestamp>/)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(STUDIES) - set(PENDING))
    if unknown:
        parser.error(f"unknown study: {', '.join(unknown)} (known: {', '.join(STUDIES)})")
    args.names = [n for n in STUDIES if not names or n in names]
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    return args


def write_report(ctx: Context, results: list[tuple[StudyResult, float]], env: dict) -> Path:
    lines = [
        "# twinopt benchmark report",
        "",
        f"Run {env['started']}{' (--quick)' if ctx.quick else ''} on {env['machine']['cpu']} "
        f"({env['machine']['cpu_count']} cores), device {ctx.device}.",
        "",
        "Library versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "## Summary",
        "",
        markdown_table(
            ["study", "verdict", "seconds"], [(r.name, r.verdict, f"{s:.1f}") for r, s in results]
        ),
        "",
    ]
    for result, _ in results:
        lines += [
            f"## {result.name}",
            "",
            f"*{result.question}*",
            "",
            f"**Verdict:** {result.verdict}",
            "",
        ]
        for table in result.tables:
            lines += [table, ""]
        for fig in result.figures:
            lines += [f"![{fig}]({fig})", ""]
        lines += [f"- {note}" for note in result.notes] + [""]
    pending = [name for name in PENDING if name not in {r.name for r, _ in results}]
    if pending:
        lines += ["## Not run yet", ""]
        lines += [f"- `{name}`: waits for {PENDING[name]}." for name in pending] + [""]
    path = ctx.path("report.md")
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now()
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / started.strftime("%Y%m%d-%H%M%S"))
    )
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, seeds=args.seeds, device=args.device, out_dir=out)
    env = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(args.device),
        "versions": versions(),
        "quick": args.quick,
        "seeds": args.seeds,
    }
    results = []
    for i, name in enumerate(args.names, 1):
        print(f"[{i}/{len(args.names)}] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = importlib.import_module(STUDIES[name]).run(ctx)
        seconds = time.perf_counter() - start
        results.append((result, seconds))
        record = {
            "study": name,
            "question": result.question,
            "verdict": result.verdict,
            "seconds": seconds,
            "settings": result.settings,
            "environment": env,
            "figures": result.figures,
            "notes": result.notes,
            "results": result.data,
        }
        ctx.path(f"{name}.json").write_text(json.dumps(record, indent=1))
        print(f"[{i}/{len(args.names)}] {name} done in {seconds:.1f} s", file=sys.stderr)
    report = write_report(ctx, results, env)
    print()
    print(
        markdown_table(
            ["study", "verdict", "seconds"], [(r.name, r.verdict, f"{s:.1f}") for r, s in results]
        )
    )
    print(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
