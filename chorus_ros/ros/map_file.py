"""A map file into the running nodes: publish a 3DGS map as ``GaussianMapUpdate`` pieces.

``chorus-ros up --map FILE.ply`` uses :func:`publish_map` on a helper node in the same process:
the map goes to chorus_node over the same topic (``map_updates``) and the same code path a live
map publisher uses, as a FULL update followed by DELTAs of at most ``max_piece`` Gaussians (one
huge PointCloud2 is slow to serialise). The publisher is reliable + transient-local with a
history holding every piece, so a node that joins later still receives the whole map.
"""
from __future__ import annotations

from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["publish_map", "split_map"]


def split_map(g: GaussianArrays, max_piece: int = 200_000, max_pieces: int = 16) -> list[GaussianArrays]:
    """``g`` in consecutive pieces of at most ``max_piece`` Gaussians, but never more than
    ``max_pieces`` pieces (chorus_node's reader keeps ``map_update_depth`` = 16 by default: a late
    joiner must still see the FULL piece). At least one piece."""
    import torch
    if max_piece < 1 or max_pieces < 1:
        raise ValueError(f"max_piece and max_pieces must be >= 1, got {max_piece}, {max_pieces}")
    n = len(g)
    size = max(max_piece, -(-n // max_pieces))
    if n <= size:
        return [g]
    return [g.index(torch.arange(s, min(s + size, n))) for s in range(0, n, size)]


def publish_map(node, g: GaussianArrays, *, map_id: str, frame_id: str = "map", topic: str = "map_updates",
                max_piece: int = 200_000, max_pieces: int = 16):
    """Publish ``g`` (ids set, no extras) on ``topic`` (relative: the node's namespace applies).

    Returns:
        ``(publisher, pieces)``; keep the publisher alive for late joiners.
    """
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.map_updates import map_update_to_msg
    parts = split_map(g, max_piece, max_pieces)
    pub = node.create_publisher(GaussianMapUpdate, topic, qos.latched(len(parts)))
    stamp = node.get_clock().now().to_msg()
    for k, part in enumerate(parts):
        pub.publish(map_update_to_msg(part, map_id=map_id, sequence=k, full=(k == 0), stamp=stamp,
                                      frame_id=frame_id))
    return pub, len(parts)
