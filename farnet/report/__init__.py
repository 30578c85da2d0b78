"""Reporting: the paper's tables and figures rebuilt from ``results/``, each under its runs' provenance.

``results`` reads and validates the per-run files, ``tables`` builds Tables 1–5 and the extra tables,
``figures`` draws ``results/plots/``, ``provenance`` says how each run was made; ``reference/`` holds the
paper's numbers.
"""
