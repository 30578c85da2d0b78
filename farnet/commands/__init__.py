"""The ``farnet`` commands beyond the DVC pipeline: ``predict`` (landmarks for new images), ``export`` (ONNX),
``bench`` (speed of each fast path), ``carry`` (a prepared dataset in one file) and ``replicate`` (the paper's
protocol from a carry, without DVC)."""
