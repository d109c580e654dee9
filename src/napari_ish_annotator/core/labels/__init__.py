"""The SQLite label store: who said which term is present in which image.

* :mod:`.schema` - the schema allow-list and its checks (was ``label_schema``);
* :mod:`.connection` - the vetted, time-budgeted connection (was ``label_open``);
* :mod:`.reading` - the current labels as arrays;
* :mod:`.manifests` - manifests in and out of the store;
* :mod:`.store` - :class:`LabelStore` (was ``labels.py``);
* :mod:`.consensus` - agreement and consensus over annotators (its :func:`consensus` function
  is reached through the module: the name is the module's).

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "schema": ["SCHEMA_VERSION", "LabelValue", "check_schema", "create_schema"],
    "connection": ["BudgetConnection", "open_store"],
    "reading": ["CurrentLabels"],
    "manifests": ["ManifestIO"],
    "store": ["LabelStore"],
    "consensus": ["AnnotatorLabels", "agreement", "annotator_labels", "consensus_labels", "dawid_skene", "fleiss_kappa"],
})
