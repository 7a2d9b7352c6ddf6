"""The Chorus scene encoder: per-Gaussian features from a sparse-convolution U-Net, one
projection head per teacher, checkpoints, and incremental re-encoding of a live map.

Importing this package needs only torch; spconv is imported (and patched for CPU backward
passes, see :mod:`._spconv_compat`) when a :class:`ChorusEncoder` is built.
"""
from chorus_ros.core.encoder.config import HEAD_KINDS, EncoderConfig, HeadSpec
from chorus_ros.core.encoder.model import ChorusEncoder, EncoderOutput, ReceptiveField, receptive_field
from chorus_ros.core.encoder.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint

__all__ = ["HEAD_KINDS", "EncoderConfig", "HeadSpec", "ChorusEncoder", "EncoderOutput", "ReceptiveField",
           "receptive_field", "LoadedCheckpoint", "load_checkpoint", "save_checkpoint"]
