"""Decoding per-Gaussian encoder features: open-vocabulary semantics and persistent instances."""
from chorus_ros.core.decode.instances import (NO_INSTANCE, IdTracker, InstanceConfig, InstanceDecoder,
                                              ObjectCodebook, ObjectRecord, group_components)
from chorus_ros.core.decode.semantic import (GaussianLabels, SemanticConfig, SemanticDecoder,
                                             ViewLabels)

__all__ = ["GaussianLabels", "IdTracker", "InstanceConfig", "InstanceDecoder", "NO_INSTANCE", "ObjectCodebook",
           "ObjectRecord", "SemanticConfig", "SemanticDecoder", "ViewLabels", "group_components"]
