"""The metric SPACE: presets, filters, counts, redundancy rules. Import as ``from prunetax.enumerate import ...``."""
from prunetax.enumerate.space import PRESETS, count, excluded, extended_redundancy, metric_space, paper_redundancy

__all__ = ["PRESETS", "count", "excluded", "extended_redundancy", "metric_space", "paper_redundancy"]
