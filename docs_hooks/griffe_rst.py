"""A griffe extension: the reStructuredText in twinopt's docstrings, as the Markdown that
mkdocstrings renders.

The docstrings are Google style with a few RST constructs (design.md: "Docstrings carry the
math"). Before griffe parses a docstring, this extension rewrites

- ``.. math::`` blocks into one display equation for MathJax (``$$ ... $$``; several equations,
  one per paragraph, become the rows of an ``align`` or ``gather`` environment, so that each
  keeps its ``\\tag``);
- ``.. warning::``, ``.. note::`` (and the other admonitions) into Material admonitions;
- a paragraph ending in ``::`` and its indented literal block into a fenced Python block;
- the roles ``:func:``, ``:class:``, ``:meth:`` ... into links to the API reference where the
  target is a public name of the package (its ``__all__``), into inline code otherwise;
- ``:math:`` roles into inline math;
- an ``Args:`` entry naming several parameters (``a, b: As in ...``) into one entry each.

Used from ``mkdocs.yml`` (``extensions: [docs_hooks/griffe_rst.py:RstToMarkdown]``).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe

_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>[a-z-]+)::(?P<arg>.*)$")
_LITERAL = re.compile(r"^(?P<indent> *)(?P<text>\S.*?)::\s*$")
_ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|data|mod|attr|obj|exc|math):`(?P<target>[^`]+)`"
)
_ARGS_TITLE = re.compile(r"^(?P<indent> *)(?:Args|Arguments|Parameters|Params):\s*$")
_NAMES_ONLY = re.compile(r"^ *\w+(?:, *\w+)*, *$")
_MULTI_ARG = re.compile(r"^(?P<indent> *)(?P<names>\w+(?:, *\w+)+): (?P<desc>.*)$")

ADMONITIONS = {
    "note": "note",
    "warning": "warning",
    "caution": "warning",
    "attention": "warning",
    "danger": "danger",
    "important": "important",
    "tip": "tip",
    "hint": "tip",
    "seealso": "info",
}

Resolver = Callable[[str], "str | None"]


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from ``start`` on that are blank or indented deeper than ``indent`` (dedented,
    without leading and trailing blank lines), and the index of the first line after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    first = start
    while first < end and not lines[first].strip():
        first += 1
    body = textwrap.dedent("\n".join(lines[first:end])).split("\n") if end > first else []
    return body, end


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def display_math(body: list[str], pad: str) -> list[str]:
    """A ``.. math::`` body as one ``$$`` block: one row per paragraph (equation)."""
    rows = _paragraphs(body)
    if not rows:
        return []
    inner = "    "
    if len(rows) == 1 and not any("&" in line for line in rows[0]):
        return [f"{pad}$$", *(f"{pad}{inner}{line}" for line in rows[0]), f"{pad}$$"]
    aligned = any("&" in line for row in rows for line in row)
    env = "align" if aligned else "gather"
    out = [f"{pad}$$", f"{pad}\\begin{{{env}}}"]
    for k, row in enumerate(rows):
        if aligned and not any("&" in line for line in row):
            row = ["& " + row[0], *row[1:]]
        if k < len(rows) - 1:
            row = [*row[:-1], row[-1] + r" \\"]
        out += [f"{pad}{inner}{line}" for line in row]
    return [*out, f"{pad}\\end{{{env}}}", f"{pad}$$"]


def convert_roles(line: str, resolve: Resolver) -> str:
    def replace(match: re.Match[str]) -> str:
        role, target = match["role"], match["target"].strip()
        if role == "math":
            return f"${target}$"
        shown = target.lstrip("~.")
        if target.startswith("~"):
            shown = shown.rsplit(".", 1)[-1]
        anchor = resolve(target.lstrip("~."))
        return f"[`{shown}`][{anchor}]" if anchor else f"`{shown}`"

    return _ROLE.sub(replace, line)


def split_multi_args(lines: list[str]) -> list[str]:
    """``a, b: text`` entries of an ``Args:`` section as one entry per name."""
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        title = _ARGS_TITLE.match(line)
        if title:
            section_indent = len(title["indent"])
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and _indent_of(line) <= section_indent:
            section_indent = None
        inside = section_indent is not None and _indent_of(line) > section_indent
        # names continued on the next lines: "a, b,\n    c: text"
        while inside and _NAMES_ONLY.match(line) and i + 1 < len(lines) and lines[i + 1].strip():
            i += 1
            line = f"{line.rstrip()} {lines[i].strip()}"
        entry = _MULTI_ARG.match(line) if inside else None
        if entry:
            more, end = _block(lines, i + 1, _indent_of(line))
            pad = " " * (_indent_of(line) + 4)
            for name in (n.strip() for n in entry["names"].split(",")):
                out.append(f"{entry['indent']}{name}: {entry['desc']}")
                out += [f"{pad}{x}" if x.strip() else "" for x in more]
            i = end
            continue
        out.append(line)
        i += 1
    return out


def convert(text: str, resolve: Resolver) -> str:
    """The docstring ``text`` with its RST constructs turned into Markdown."""
    lines = split_multi_args(text.split("\n"))
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        literal = None if directive else _LITERAL.match(line)
        if directive is None and literal is None:
            out.append(convert_roles(line, resolve))
            i += 1
            continue
        match = directive or literal
        assert match is not None
        pad = match["indent"]
        body, i = _block(lines, i + 1, len(pad))
        if out and out[-1].strip():
            out.append("")
        if directive is not None:
            name = directive["name"]
            if name == "math":
                out += display_math(body, pad)
            elif name in ADMONITIONS:
                title = directive["arg"].strip()
                head = f"{pad}!!! {ADMONITIONS[name]}" + (f' "{title}"' if title else "")
                if name == "seealso" and not title:
                    head += ' "See also"'
                inner = convert("\n".join(body), resolve).split("\n")
                out += [head, *(f"{pad}    {x}" if x.strip() else "" for x in inner)]
            elif name in ("code-block", "code", "sourcecode"):
                lang = directive["arg"].strip() or "python"
                out += [f"{pad}```{lang}", *(f"{pad}{x}" for x in body), f"{pad}```"]
            else:  # an unknown directive: kept as text
                out += [line, *(f"{pad}    {x}" for x in body)]
        else:
            assert literal is not None
            out += [f"{pad}{literal['text']}:", ""]
            out += [f"{pad}```python", *(f"{pad}{x}" for x in body), f"{pad}```"]
        out.append("")
    return "\n".join(out).rstrip("\n")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package before it is parsed."""

    documented = ("torch_opt", "jax_opt")  # the packages whose __all__ the API pages document

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        public = self._public(pkg) if pkg.path in self.documented else {}
        collection = loader.modules_collection

        for obj in _objects(pkg):
            if obj.docstring is None:
                continue

            def resolve(target: str, obj: griffe.Object = obj) -> str | None:
                scopes = [obj.path, obj.module.path, pkg.path, ""]
                if obj.parent is not None:
                    scopes.insert(1, obj.parent.path)
                for scope in scopes:
                    path = f"{scope}.{target}" if scope else target
                    try:
                        found = collection[path]
                    except (KeyError, ValueError):
                        continue
                    try:
                        canonical = found.final_target.path if found.is_alias else found.path
                    except griffe.AliasResolutionError:
                        canonical = found.path
                    return self._anchor(canonical, public)
                return None

            obj.docstring.value = convert(obj.docstring.value, resolve)

    @staticmethod
    def _public(pkg: griffe.Module) -> dict[str, str]:
        """Canonical path -> documented identifier (``pkg.NAME``) of each name in ``__all__``."""
        public: dict[str, str] = {}
        for name in pkg.exports or ():
            name = str(name)
            if name not in pkg.members:
                continue
            member = pkg.members[name]
            identifier = f"{pkg.path}.{name}"
            if member.is_module and name in member.members:
                # ``from pkg.amos import amos``: griffe keeps the submodule under the name, and
                # the API pages document the function by its path in that module
                member = member.members[name]
                identifier = f"{pkg.path}.{name}.{name}"
            try:
                canonical = member.final_target.path if member.is_alias else member.path
            except griffe.AliasResolutionError:
                canonical = getattr(member, "target_path", member.path)
            public[canonical] = identifier
        return public

    @staticmethod
    def _anchor(canonical: str, public: dict[str, str]) -> str | None:
        """The documented identifier for ``canonical``: a public name, or a member of one."""
        head, rest = canonical, ""
        while head:
            if head in public:
                return public[head] + rest
            if "." not in head:
                return None
            head, last = head.rsplit(".", 1)
            rest = f".{last}{rest}"
        return None
