"""Reporting: the paper's tables and figures rebuilt from ``results/``, each under its runs' provenance.

``results`` reads and validates the per-run files, ``tables`` builds Tables 1–5 and the extra tables,
``figures`` draws ``results/plots/``, ``gpu`` reads a GPU run brought home (how each run was made:
:mod:`farnet.core.provenance`); ``reference/`` holds the
paper's numbers.
"""
