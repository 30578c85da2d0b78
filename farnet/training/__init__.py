"""Training: the engine (epochs, checkpoints, budgets, logs), one optimisation step on each step path
(``steps``), the losses of the paper (``losses``), data-parallel runs (``distributed``) and clean stops on
SIGINT/SIGTERM (``interrupt``)."""
