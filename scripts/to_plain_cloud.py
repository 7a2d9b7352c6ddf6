"""Write a 3DGS PLY as a plain coloured point cloud PLY (x y z + colour, nothing else of 3DGS).

    .venv/bin/python scripts/to_plain_cloud.py IN.ply OUT.ply [--colour uchar|float] [--keep-gt]

Each Gaussian becomes one point: its centre and its base colour (the SH DC term, clamped to
[0, 1]); scales, opacities, rotations and higher SH are dropped. ``--keep-gt`` also copies the
ground-truth label/instance properties (chorus_ros.core.datasets GT_*_PROPERTIES) so that
``chorus-eval --dataset DIR --map OUT.ply`` still scores 3D metrics. Used for the "Plain
point-cloud input" measurements in docs/generalisation.md (never commit what it writes from
ScanNet data: write under /tmp or .cache/).
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.datasets.folder import GT_INSTANCE_PROPERTIES, GT_LABEL_PROPERTIES
    from chorus_ros.core.ply import read_ply, write_point_cloud_ply

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="3DGS PLY")
    ap.add_argument("out", help="plain point cloud PLY to write")
    ap.add_argument("--colour", choices=["uchar", "float"], default="uchar", help="colour property type")
    ap.add_argument("--keep-gt", action="store_true", help="copy ground-truth label/instance properties")
    a = ap.parse_args(argv)
    res = read_ply(a.src)
    if res.layout != "3dgs":
        ap.error(f"{a.src} is already a plain point cloud")
    g = res.gaussians
    keep = set(GT_LABEL_PROPERTIES) | set(GT_INSTANCE_PROPERTIES) if a.keep_gt else set()
    extras = {k: v for k, v in g.extras.items() if k in keep and v.ndim == 1}
    write_point_cloud_ply(a.out, g.means, g.base_rgb, colour_type=a.colour, extras=extras)
    print(f"wrote {a.out}: {len(g)} points, {a.colour} colour" + (f", {sorted(extras)}" if extras else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
