"""Reporting: the paper's tables and figures rebuilt from ``results/``, each under its runs' provenance.

``results`` reads and validates the per-run files and ``gpu`` a ``farnet replicate`` run imported into
``results/gpu/``; ``paper`` reads the paper's numbers (``reference/``) and picks the run of each of its rows.
``tables`` is the tables stage: Tables 1–3 (``isbi_tables``), 4–5 (``fold_tables``) and the extra tables
(``extra_tables``), built from ``columns``, headed by ``headers`` and written by ``markdown``. ``plots`` is the
plots stage, drawing ``figures`` and ``training_curves``. How each run was made: :mod:`farnet.core.provenance`.
"""
