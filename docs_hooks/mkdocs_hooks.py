"""MkDocs hooks of the docs site (``hooks:`` in ``mkdocs.yml``).

- MathJax is served from the built site, never from a CDN: the build copies MathJax 3's
  self-contained TeX-to-SVG bundle (``es5/tex-svg-full.js``, fonts included) and its licence
  from the ``django-static-mathjax`` package of the ``docs`` extra (a plain copy of the MathJax
  release; it needs no Django) into ``site/assets/mathjax/``. The pages then render their
  equations without any network, at build time and at view time.
- The API reference must cover the public API: the build fails if a name of ``__all__`` of
  ``torch_opt`` or ``jax_opt`` has no ``::: package.NAME`` entry in ``docs/api/``.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import shutil
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("torch_opt", "jax_opt")
MATHJAX_FILES = {"es5/tex-svg-full.js": "tex-svg-full.js", "LICENSE": "LICENSE"}
MATHJAX_TARGET = "assets/mathjax"


def _mathjax_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("mathjax")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "MathJax not found: install the docs extra (pip install -e '.[docs]'), which "
            "brings the django-static-mathjax package"
        )
    found = pathlib.Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    if not all((found / name).is_file() for name in MATHJAX_FILES):
        raise PluginError(f"{found} lacks MathJax's {', '.join(MATHJAX_FILES)}")
    return found


def public_names(package: str) -> list[str]:
    """``__all__`` of ``package/__init__.py``, read without importing the package."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise PluginError(f"{package}/__init__.py has no __all__")


def on_config(config: Any, **kwargs: Any) -> Any:
    api = pathlib.Path(config["docs_dir"]) / "api"
    text = "\n".join(p.read_text() for p in sorted(api.rglob("*.md")))
    documented = set(re.findall(r"^::: *([\w.]+)", text, flags=re.M))
    missing = [
        f"{package}.{name}"
        for package in PACKAGES
        for name in public_names(package)
        # a name that a submodule of the same name shadows for griffe (jax_opt.amos, the
        # function, beside jax_opt.amos, the module) is documented by its path in that module
        if not {f"{package}.{name}", f"{package}.{name}.{name}"} & documented
    ]
    if missing:
        raise PluginError("public names without an API entry in docs/api/: " + ", ".join(missing))
    _mathjax_dir()  # fail early, before rendering, where MathJax is not installed
    return config


def on_post_build(config: Any, **kwargs: Any) -> None:
    source = _mathjax_dir()
    target = pathlib.Path(config["site_dir"]) / MATHJAX_TARGET
    target.mkdir(parents=True, exist_ok=True)
    for name, copy in MATHJAX_FILES.items():
        shutil.copyfile(source / name, target / copy)
