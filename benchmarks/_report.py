"""The one layer that renders studies: tables, plots, each study's JSON and ``report.md``.

Studies build plain specs with :func:`table`, :func:`curve`, :func:`panel`, :func:`line_plot`
and :func:`figure` (dicts of strings and numbers) and return them in their ``StudyResult``;
nothing here knows any study.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FW_STYLE = {"torch": "-", "jax": "--"}  # line styles of the two frameworks in every plot


def cell(value: Any, spec: str = "") -> str:
    """A table cell: ``None`` -> empty, numbers by ``spec`` (default 3 significant digits),
    everything else by ``str``."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)) and not spec:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "diverged" if np.isnan(value) else str(value)
        return format(float(value), spec or ".3g")
    return format(value, spec) if spec else str(value)


def table(records: Iterable[dict], columns: dict[str, str | Callable], title: str = "") -> dict:
    """A table spec from records: one row per record, one column per ``columns`` entry,
    ``header -> "key"`` or ``"key:spec"`` (a format spec, e.g. ``"ms:.2f"``), or ``header ->
    function(record)`` returning the cell's value (a string is kept as it is)."""

    def value(record: dict, col) -> str:
        if callable(col):
            return cell(col(record))
        key, _, spec = col.partition(":")
        return cell(record.get(key), spec)

    rows = [[value(r, col) for col in columns.values()] for r in records]
    return {"title": title, "headers": list(columns), "rows": rows}


def markdown_table(spec: dict) -> str:
    lines = [f"**{spec['title']}**", ""] if spec.get("title") else []
    lines += ["| " + " | ".join(spec["headers"]) + " |", "|" + "---|" * len(spec["headers"])]
    lines += ["| " + " | ".join(row) + " |" for row in spec["rows"]]
    return "\n".join(lines)


def curve(label: str, x: Sequence, y: Sequence, style: str = "-", color=None, **extra) -> dict:
    """One line of a panel: ``style`` a matplotlib format (``"-"``, ``"--"``, ``"o-"``, ...),
    ``color`` an int (the i-th color of the cycle) or a matplotlib color; ``extra``: ``band``
    (``(low, high)`` arrays shaded around the line) or ``lw``."""
    out = {"label": label, "x": list(map(float, x)), "y": list(map(float, y)), "style": style}
    return out | ({"color": color} if color is not None else {}) | extra


PANEL = {"xlabel": "step", "ylabel": "", "xscale": "linear", "yscale": "linear", "hlines": (),
         "kind": "line", "ylim": None}  # a panel's options and their defaults # fmt: skip


def panel(curves: list[dict], title: str = "", **options) -> dict:
    """One axes: ``curves`` (from :func:`curve`) and any of ``PANEL``'s options; ``hlines``:
    ``(y, label)`` pairs drawn dotted; ``kind="barh"``: one horizontal bar per curve, of length
    its first ``x``; ``ylim``: ``(low, high)``."""
    unknown = set(options) - set(PANEL)
    if unknown:
        raise TypeError(f"unknown panel options: {sorted(unknown)}")
    spec = {"curves": curves, "title": title} | PANEL | options
    return spec | {"hlines": [list(h) for h in spec["hlines"]]}


def record_curve(r: dict, x: Sequence, y: Sequence, methods, **extra) -> dict:
    """The curve of a study's record ``r``: labelled ``"<label> [<framework>]"`` (the label
    ``r["label"]``, else ``r["method"]``), in the framework's line style and the color of
    ``r["method"]``'s place in ``methods``."""
    label, color = r.get("label", r["method"]), list(methods).index(r["method"])
    return curve(f"{label} [{r['framework']}]", x, y, FW_STYLE[r["framework"]], color, **extra)


def figure(name: str, panels: list[dict], title: str = "") -> dict:
    """A figure spec: ``panels`` side by side, written as ``<name>.png``."""
    return {"name": name.removesuffix(".png") + ".png", "panels": panels, "title": title}


def line_plot(name: str, curves: list[dict], title: str = "", **panel_args) -> dict:
    """A one-panel figure of ``curves`` against steps or evaluations (see :func:`panel`)."""
    return figure(name, [panel(curves, title, **panel_args)])


def _color(c):
    return f"C{c % 10}" if isinstance(c, (int, np.integer)) else c


def render_figure(spec: dict, out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(spec["panels"])
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.4), squeeze=False)
    for ax, p in zip(axes[0], spec["panels"], strict=True):
        ax.set(xscale=p["xscale"], yscale=p["yscale"], xlabel=p["xlabel"], ylabel=p["ylabel"])
        if p["kind"] == "barh":
            colors = [_color(c.get("color", i)) for i, c in enumerate(p["curves"])]
            labels, lengths = [c["label"] for c in p["curves"]], [c["x"][0] for c in p["curves"]]
            ax.barh(labels, lengths, color=colors)
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=7)
        for c in p["curves"] if p["kind"] == "line" else []:
            kw = {"color": _color(c["color"])} if "color" in c else {}
            ax.plot(c["x"], c["y"], c["style"], label=c["label"], lw=c.get("lw", 1.4), ms=3, **kw)
            if "band" in c:
                ax.fill_between(c["x"], *c["band"], alpha=0.15, **kw)
        for y, label in p["hlines"]:
            ax.axhline(y, color="0.3", lw=0.8, ls=":", label=label or None)
        if p["ylim"]:
            ax.set_ylim(*p["ylim"])
        ax.set_title(p["title"], fontsize=10)
        if p["kind"] == "line" and (p["curves"] or p["hlines"]):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if spec["title"]:
        fig.suptitle(spec["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / spec["name"], dpi=100)
    plt.close(fig)
    return spec["name"]


def _plain(x):
    """``x`` with NumPy scalars and arrays made JSON-serializable."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_study(out_dir: Path, name: str, question: str, result, seconds: float, env: dict) -> dict:
    """Render a study's figures and write ``<name>.json``; return the JSON's content."""
    figures = [render_figure(f, out_dir) for f in result.figures]
    head = {"study": name, "question": question, "seconds": seconds, "environment": env}
    record = _plain(head | vars(result) | {"figures": figures})
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


def summary_table(studies: list[dict]) -> str:
    columns = {"study": "study", "verdict": "verdict", "seconds": "seconds:.1f"}
    return markdown_table(table(studies, columns))


def write_report(out_dir: Path, studies: list[dict], env: dict, missing: Sequence = ()) -> Path:
    """``report.md``: the summary, then per study its question, verdict, tables, plots, notes."""
    m, quick = env["machine"], " (--quick)" if env["quick"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    machine = f"{m['cpu']} ({m['cpu_count']} cores), device {m['device']}"
    lines = ["# twinopt benchmark report", "", f"Run {env['started']}{quick} on {machine}.", ""]
    lines += [f"Library versions: {versions}", "", "## Summary", "", summary_table(studies), ""]
    for s in studies:
        lines += [f"## {s['study']}", "", f"*{s['question']}*", ""]
        lines += [f"**Verdict:** {s['verdict']}", ""]
        lines += [markdown_table(t) + "\n" for t in s["tables"]]
        lines += [f"![{f}]({f})\n" for f in s["figures"]]
        lines += [f"- {note}" for note in s["notes"]] + [""]
    if missing:
        lines += ["## Not run", "", "Not in this checkout: " + ", ".join(missing) + ".", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def pm(values, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± sample std`` of ``values`` (times ``scale``); the mean alone for one value."""
    v = np.asarray(values, np.float64) * scale
    if v.size == 1:
        return f"{float(v.ravel()[0]):.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def span(values) -> str:
    """``"lo-hi"`` of ``values`` to 2 decimals (one number where both ends read the same)."""
    lo, hi = f"{min(values):.2f}", f"{max(values):.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def rounded(values, digits: int = 4):
    """``values`` as (nested) lists of floats with ``digits`` significant digits (small JSON)."""
    fn = np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])
    return fn(np.asarray(values, np.float64)).tolist()
