"""Object-centric learning: slot attention over a view's 2D features, a scene-agnostic codebook
of object prototypes (GOCL), the ``gocl`` training stage, and query scores that account for an
object's support.

Example::

    from chorus_ros.core.objects import GOCL, GOCLConfig
    model = GOCL(GOCLConfig(in_dim=32))
    ident, out = model.identity_map(feats)     # feats [h, w, 32] -> [h, w, code_dim], masks, codes
"""
from chorus_ros.core.objects.codebook import CodeAssignment, CodebookConfig, PrototypeCodebook
from chorus_ros.core.objects.gocl import GOCL, GOCLConfig, GOCLOutput, grid_coords
from chorus_ros.core.objects.slots import SlotAttention, SlotAttentionConfig
from chorus_ros.core.objects.support import SupportConfig, support_confidence, support_weight, support_scores

__all__ = ["CodeAssignment", "CodebookConfig", "PrototypeCodebook", "GOCL", "GOCLConfig", "GOCLOutput",
           "grid_coords", "SlotAttention", "SlotAttentionConfig", "SupportConfig", "support_confidence",
           "support_weight", "support_scores"]
