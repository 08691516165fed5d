"""Model analysis: parameters and GFLOPs (paper convention), the paper's figures, Figure 4 scaling, attention maps."""

from .attention import AttentionMaps, attention_maps, save_attention_figure
from .complexity import Complexity, complexity, count_params
from .counting import MMCVRules

__all__ = ["AttentionMaps", "Complexity", "MMCVRules", "attention_maps", "complexity", "count_params",
           "save_attention_figure"]
