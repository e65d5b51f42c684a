// MathJax 3 for pymdownx.arithmatex (generic mode); the script itself is copied from the django-static-mathjax
// package at build time (docs/hooks.py), so the site needs no network.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
  svg: { fontCache: "global" },
};
