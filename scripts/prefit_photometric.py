"""Fit the photometric training rooms of a training config ahead of time, in parallel processes.

A config with ``data.photometric_fraction > 0`` (e.g. config/train/demo_photometric.yaml) fits
the rooms it selects the first time it lifts them, one after the other in the training process
(about 6-12 CPU minutes per room). This script makes the same fits, with the same cache keys
(``.cache/shifts`` unless the config's ``data.photometric_fit`` names another ``cache_dir``), so
the training run finds them cached; rooms already cached are skipped. Run one process per core:

    python scripts/prefit_photometric.py --config config/train/demo_photometric.yaml --part 0 --parts 2 &
    python scripts/prefit_photometric.py --config config/train/demo_photometric.yaml --part 1 --parts 2 &
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="training config (its data section picks the rooms)")
    ap.add_argument("--part", type=int, default=0, help="this process's share: rooms part, part+parts, ...")
    ap.add_argument("--parts", type=int, default=1, help="number of processes sharing the rooms")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    a = ap.parse_args(argv)
    if not 0 <= a.part < a.parts:
        ap.error(f"--part must be in [0, --parts), got {a.part} of {a.parts}")

    import torch

    from chorus_ros.core.lift import synthetic_room, synthetic_room_specs
    from chorus_ros.core.train.config import load_train_config

    torch.set_num_threads(a.threads)
    d = load_train_config(a.config).data
    if d.source != "synthetic" or d.photometric_fraction <= 0:
        print(f"{a.config}: no photometric training rooms (data.source {d.source!r}, "
              f"photometric_fraction {d.photometric_fraction})")
        return 0
    specs = [r for r in synthetic_room_specs(d.train_seeds, scene=d.scene, density_range=d.density_range or None,
                                             photometric_fraction=d.photometric_fraction,
                                             photometric_fit=d.photometric_fit or None) if r[2] is not None]
    mine = specs[a.part::a.parts]
    print(f"{a.config}: photometric rooms {[s for s, _, _ in specs]}; this process fits {[s for s, _, _ in mine]}",
          flush=True)
    for s, scene, photometric in mine:     # the rooms the training run's lift makes (same cache keys)
        t = time.time()
        synthetic_room(s, scene, photometric)
        print(f"room {s}: {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
