"""Outside data readers, in one place: scene folders (posed images with ground truth plus a 3DGS
map) in the Replica / semantic-nerf layout or the chorus_ros export layout, labels maps and
view selections. Used by evaluation, adaptation and training alike.

See :mod:`chorus_ros.core.datasets.folder` for the layouts.
"""
from chorus_ros.core.datasets.folder import (GT_INSTANCE_PROPERTIES, GT_LABEL_PROPERTIES, LAYOUT_EXPORT,
                                             LAYOUT_REPLICA, Intrinsics, LabelsMap,
                                             check_labels_map, SceneFolder, SceneFrame,
                                             load_labels_map, open_scene, parse_views, strip_gaussians)
from chorus_ros.core.datasets.synthetic import scene_from_synthetic
from chorus_ros.core.datasets.writer import write_classes_json, write_scene_folder

__all__ = ["GT_INSTANCE_PROPERTIES", "GT_LABEL_PROPERTIES", "LAYOUT_EXPORT", "LAYOUT_REPLICA", "Intrinsics",
           "LabelsMap", "SceneFolder", "check_labels_map", "SceneFrame", "load_labels_map", "open_scene", "parse_views",
           "scene_from_synthetic", "strip_gaussians", "write_classes_json", "write_scene_folder"]
