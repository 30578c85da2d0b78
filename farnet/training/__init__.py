"""Training: the engine's epoch loop (``engine``), its options and result (``options``), the learning-rate
schedule (``schedule``), time and step budgets (``budget``), the per-step loss log (``losslog``), the one
resumable-checkpoint writer and resume point (``resume``), one optimisation step on each step path and the one
``make_stepper`` (``steps``), the losses of the paper (``losses``), data-parallel runs (``distributed``) and clean
stops on SIGINT/SIGTERM (``interrupt``)."""
