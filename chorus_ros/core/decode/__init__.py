"""Decoding per-Gaussian encoder features: open-vocabulary semantics (optionally with a height
prior), and persistent instances."""
from chorus_ros.core.decode.height import HeightPrior, estimate_floor, fit_height_prior
from chorus_ros.core.decode.instances import (NO_INSTANCE, IdTracker, InstanceConfig, InstanceDecoder,
                                              ObjectCodebook, ObjectRecord, group_components)
from chorus_ros.core.decode.semantic import (GaussianLabels, SemanticConfig, SemanticDecoder,
                                             ViewLabels)

__all__ = ["GaussianLabels", "HeightPrior", "IdTracker", "InstanceConfig", "InstanceDecoder", "NO_INSTANCE", "ObjectCodebook",
           "ObjectRecord", "SemanticConfig", "SemanticDecoder", "ViewLabels", "estimate_floor", "fit_height_prior",
           "group_components"]
