"""``chorus-average``: average the weights of checkpoints of one recipe (a "model soup").

    chorus-average --out checkpoints/demo .cache/train/demo_stage6a .cache/train/demo_stage6b
    chorus-average --out DIR A B C --weights 2 1 1

The checkpoints must share the architecture, label set, teachers and text encoder (fine-tunes of
one parent, e.g. one config run with two seeds); the average records every ingredient's training
record (docs/training.md; the shipped stage 6 in docs/generalisation.md, "Stage 6").
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.encoder.checkpoint import average_checkpoints
    from chorus_ros.core.errors import ChorusError

    ap = argparse.ArgumentParser(prog="chorus-average", description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", metavar="CHECKPOINT", help="checkpoint folders to average (two or more)")
    ap.add_argument("--out", required=True, help="folder of the averaged checkpoint (created or overwritten)")
    ap.add_argument("--weights", nargs="+", type=float, help="one positive weight per checkpoint (default: uniform)")
    a = ap.parse_args(argv)
    try:
        ck = average_checkpoints(a.sources, a.out, a.weights)
    except ChorusError as e:
        print(f"chorus-average: error: {e}", file=sys.stderr)
        return 2
    w = ck.meta["training"]["average"]["weights"]
    print(f"chorus-average: {len(a.sources)} checkpoints (weights {', '.join(f'{x:.3f}' for x in w)}) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
