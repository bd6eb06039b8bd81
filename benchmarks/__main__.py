"""``python -m benchmarks``: run the benchmark studies and write a report.

A run writes ``benchmarks/results/<timestamp>/`` (or ``--out DIR``): ``report.md`` with every
verdict, table and plot, one ``<study>.json`` per study and the PNG plots.

The study contract. A study is a module ``benchmarks/<name>.py``, listed in ``STUDIES``, with

- ``NAME = "<name>"`` and ``QUESTION = "...?"`` (one question, ending in "?");
- ``run(ctx: Context) -> StudyResult`` (both in ``benchmarks._common``). ``ctx.quick`` asks for
  a smoke run: the same code on fewer steps and seeds (``ctx.sized(full, quick)``,
  ``ctx.seed_list``); ``ctx.seeds``, ``ctx.device`` (torch's device) complete it.
- ``StudyResult(verdict, records, tables=[], figures=[], settings={}, notes=[])``: ``records``
  is plain data (dicts and lists of numbers and strings) and goes to the JSON as it is; the
  ``verdict`` is one sentence (at most ~300 characters) built from the records; ``notes`` are
  a few short lines, if any.
- Tables and plots are specs from ``benchmarks._report``: ``table(records, {header: "key",
  header: "key:.2f", header: lambda r: ...}, title)``; ``line_plot(name, [curve(label, x, y,
  style, color), ...], title, xlabel=, ylabel=, xscale=, yscale=, hlines=)`` for curves against
  steps or evaluations, or ``figure(name, [panel(curves, ...), ...])`` for several panels;
  ``record_curve(record, x, y, methods)`` styles a record's curve by its framework and method.
  This runner renders them (markdown, PNG) and writes the files; a study writes nothing itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks._common import Context, installed, machine, versions
from benchmarks._report import summary_table, write_report, write_study

# In the order they run. A listed module that is not in the checkout is reported as not run.
STUDIES = (
    "ode_tracking loss_tied convergence amos_mlp amos_lm flooding flooding_digits penalty "
    "sampling mgs_seq step_time"
).split()


def available() -> list[str]:
    return [name for name in STUDIES if installed(f"benchmarks.{name}")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps and seeds")
    parser.add_argument("--only", default="", help="comma-separated study names")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for noisy studies")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, or cuda")
    parser.add_argument("--out", help="output folder (default: benchmarks/results/<timestamp>)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(STUDIES))
    if unknown:
        parser.error(f"unknown study: {', '.join(unknown)} (known: {', '.join(STUDIES)})")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    have = available()
    args.names = [n for n in have if not names or n in names]
    args.missing = [n for n in STUDIES if n not in have and (not names or n in names)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now()
    default = Path(__file__).parent / "results" / started.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else default
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, seeds=args.seeds, device=args.device, out_dir=out)
    env = {"started": started.isoformat(timespec="seconds"), "machine": machine(args.device)}
    env |= {"versions": versions(), "quick": args.quick, "seeds": args.seeds}
    studies = []
    for i, name in enumerate(args.names, 1):
        print(f"[{i}/{len(args.names)}] {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        result = module.run(ctx)
        seconds = time.perf_counter() - start
        studies.append(write_study(out, name, module.QUESTION, result, seconds, env))
        print(f"[{i}/{len(args.names)}] {name} done in {seconds:.1f} s", file=sys.stderr)
    report = write_report(out, studies, env, args.missing)
    print("\n" + summary_table(studies) + f"\n\nreport: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
