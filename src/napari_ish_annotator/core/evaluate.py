"""Moved to :mod:`.evaluation` (the one evaluation engine); kept as a re-export only for
``widgets/_session.py`` (owned by the session branch) until it imports ``core.evaluation``."""

from .evaluation import METRICS, format_table, grouped_folds, term_metrics

__all__ = ["METRICS", "term_metrics", "grouped_folds", "format_table"]
