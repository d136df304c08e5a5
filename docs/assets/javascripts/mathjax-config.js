// MathJax 3 configuration, read by the vendored docs/assets/mathjax/tex-svg-full.js that loads after this file
// (the SVG output needs no font files, so the built site shows its maths offline, even from file://).
//
// Markdown pages and docstrings: only the maths that pymdownx.arithmatex marked (\( \) and \[ \] inside class
// "arithmatex"); every other element is ignored, so a stray $ in prose stays a dollar sign. Notebook pages
// (mkdocs-jupyter, class "jupyter-wrapper"): the $ $ and $$ $$ of the Markdown cells, as Jupyter shows them;
// code and outputs (pre, code) are skipped by MathJax's defaults.
(() => {
  const notebook = document.querySelector(".jupyter-wrapper") !== null;
  window.MathJax = {
    tex: {
      inlineMath: notebook ? [["$", "$"], ["\\(", "\\)"]] : [["\\(", "\\)"]],
      displayMath: notebook ? [["$$", "$$"], ["\\[", "\\]"]] : [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
    },
    options: notebook ? {} : { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
    svg: { fontCache: "global" },
  };
})();
