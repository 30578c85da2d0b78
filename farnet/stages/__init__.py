"""What each pipeline stage does, as library functions taking the resolved :class:`~farnet.config.Params`.

One module per DVC stage, importing only what that stage needs, so that each stage's code dependencies in
dvc.yaml are exactly the modules its script reaches (``tests/test_dvc_deps.py`` checks it). The stage scripts in
``pipelines/`` only read argv and params and call one of these. Folder layout (all relative to the project root,
all outside git except ``results/``):

- ``resolved/``: each stage's own resolved parameters (``<run>/train.json``, ``<run>/evaluate.json``,
  ``datasets/<name>.json``);
- ``data/raw/<dataset>/``: fetched files, checked against sha256 sums;
- ``data/prepared/<dataset>/``: every image at the dataset's size (memory-mapped) and ``dataset.json``
  (splits, landmark names, unit, extras such as Cobb angles);
- ``models/<run>/``: ``model.pt`` (the selected weights + everything needed to use them), ``train_info.json``
  and, while a run is unfinished, its resumable state in ``state/``;
- ``results/``: per-run metrics, predictions and run info; tables, plots, training logs.
"""
