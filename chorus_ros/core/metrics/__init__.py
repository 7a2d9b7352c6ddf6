"""Evaluation metrics: semantic (mIoU, mAcc, oAcc, foreground variants), panoptic quality over
things, and cross-view instance-id consistency. Definitions are in each module's docstring."""
from chorus_ros.core.metrics.instance import (ConsistencyScores, IdConsistency, PanopticQuality,
                                              PanopticScores)
from chorus_ros.core.metrics.semantic import DEFAULT_BACKGROUND, ConfusionMatrix, SemanticScores

__all__ = ["ConfusionMatrix", "ConsistencyScores", "DEFAULT_BACKGROUND", "IdConsistency",
           "PanopticQuality", "PanopticScores", "SemanticScores"]
