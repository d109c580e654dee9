"""Science and I/O of napari-ish-annotator. Nothing here imports Qt or napari.

One package per topic; each package's ``__init__`` is its public face (a docstring saying what
is in it, ``__all__`` of its public names, reached lazily through :func:`.utils.lazy.attach`).
Every name has one home module; import it from there or from its package's face.

* :mod:`.utils` - the user-facing error, progress/cancel, atomic files, CSV, optional extras;
* :mod:`.data` - images and the pixel budget, the input listing, manifests, vocabularies;
* :mod:`.labels` - the SQLite label store: schema, connection, reading, store, consensus;
* :mod:`.backbones` - the pretrained networks: specs, weights, builders, trunk, devices;
* :mod:`.features` - preprocessing, decoding, the extractor, the feature cache, dask;
* :mod:`.learn` - logistic ensembles, calibration, folds, splits, metrics, evaluation, bundles,
  active learning;
* :mod:`.explain` - Grad-CAM (logistic ensembles and fine-tuned heads);
* :mod:`.finetune` - multi-task fine-tuning of the trunk;
* :mod:`.export` - bioimage.io export;
* :mod:`.synthetic` - synthetic embryos and simulated experiments;
* :mod:`.workflow` - train / predict / evaluate, the steps the CLI and the session both call.
"""
