// MathJax 3 settings, read by the bundle that the build copies to assets/mathjax/
// (docs_hooks/mkdocs_hooks.py). pymdownx.arithmatex (generic mode) wraps each formula in an
// element of class "arithmatex" with \( \) or \[ \] delimiters; only those are typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*",
    processHtmlClass: "arithmatex",
    // No context menu: its accessibility explorer would fetch the speech engine from a CDN.
    enableMenu: false,
  },
  svg: { fontCache: "global" },
};
