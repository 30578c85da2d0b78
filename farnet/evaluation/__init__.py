"""Evaluation: the heatmap codec (``heatmaps``: targets and decoding), the evaluation loop over a split
(``loop``), the landmark metrics of the paper (``metrics``) and the spine's (``spine_metrics``)."""
