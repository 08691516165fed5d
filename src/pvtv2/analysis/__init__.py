"""Complexity analysis: parameters and GFLOPs in the paper's convention, the paper's figures, Figure 4 scaling."""

from .complexity import Complexity, complexity, count_params
from .counting import MMCVRules

__all__ = ["Complexity", "MMCVRules", "complexity", "count_params"]
