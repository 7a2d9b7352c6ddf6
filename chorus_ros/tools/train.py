"""``chorus-train``: train the Chorus encoder (or a stage's module) from a YAML config.

    chorus-train --config config/train/demo.yaml                 # the demo checkpoint (stage align)
    chorus-train --config config/train/contrastive.yaml          # self-supervised pre-training
    chorus-train --config config/train/demo.yaml --stage contrastive
    chorus-train --list-stages
    chorus-train --config config/train/demo.yaml optim.steps=200 checkpoint.dir=/tmp/ck
    torchrun --nproc_per_node 2 -m chorus_ros.tools.train --config config/train/demo.yaml

Overrides are dotted ``key=value`` pairs (values parsed as YAML). Training resumes from
``<log.dir>/trainer_state.pt`` when present (``checkpoint.resume=false`` starts over).
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.errors import ChorusError
    from chorus_ros.core.train import Trainer, load_train_config
    from chorus_ros.core.train.trainer import shutdown_distributed

    ap = argparse.ArgumentParser(prog="chorus-train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="training config YAML (e.g. config/train/demo.yaml)")
    ap.add_argument("--stage", help="training stage (overrides the config's 'stage'); see --list-stages")
    ap.add_argument("--list-stages", action="store_true", help="print the registered training stages and exit")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.steps=2")
    a = ap.parse_args(argv)
    if a.list_stages:
        from chorus_ros.core.train.stages import list_stages
        print("\n".join(list_stages()))
        return 0
    if not a.config:
        ap.error("--config is required")
    try:
        cfg = load_train_config(a.config, list(a.overrides) + ([f"stage={a.stage}"] if a.stage else []))
        if a.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        trainer = Trainer(cfg)
        try:
            result = trainer.fit()
        finally:
            shutdown_distributed()
    except ChorusError as e:
        print(f"chorus-train: error: {e}", file=sys.stderr)
        return 2
    if trainer.dist.main:
        last = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
        print(f"chorus-train: {result.step} steps in {result.seconds:.1f} s; checkpoint in {result.checkpoint_dir}")
        print(json.dumps(last, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
