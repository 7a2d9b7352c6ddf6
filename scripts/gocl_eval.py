"""Score a trained GOCL (stage 'gocl') on held-out synthetic views: FG-ARI, mBO, code purity.

    python scripts/gocl_eval.py .cache/gocl_oracle --seeds 1000 1001 1002
"""
import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    from chorus_ros.core.objects import GOCL
    from chorus_ros.core.objects.evaluate import evaluate_gocl
    from chorus_ros.core.objects.teacher import gocl_dir
    from chorus_ros.core.teachers import build_teacher
    from chorus_ros.core.train.stages.gocl import collect_views

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="GOCL directory or training checkpoint holding gocl/")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    ap.add_argument("--views", default='{"loop_views": 10, "random_views": 6, "width": 192, "height": 144}')
    ap.add_argument("--scene", default='{"target_gaussians": 40000}')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = gocl_dir(a.checkpoint)
    model = GOCL.load(d)
    meta = json.loads((d / "gocl.json").read_text())["meta"]
    teacher = build_teacher(meta["teacher"])
    batches = collect_views(a.seeds, teacher, scene=json.loads(a.scene), views=json.loads(a.views))
    res = evaluate_gocl(model, batches)
    res["teacher"] = meta["teacher"]["type"]
    res["seeds"] = a.seeds
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
