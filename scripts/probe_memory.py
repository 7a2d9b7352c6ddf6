"""Probe: RSS of the encoder stack (GaussianMap + cached IncrementalEncoder, default encoder, no
ROS) for a 20K map, after a FULL of N Gaussians, back at 20K, and after trim_heap().

    python scripts/probe_memory.py 400000        # the numbers in docs/reliability.md
"""
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig  # noqa: E402
from chorus_ros.core.encoder.incremental import IncrementalEncoder  # noqa: E402
from chorus_ros.core.gaussians import GaussianArrays  # noqa: E402
from chorus_ros.core.map import GaussianMap, MapConfig  # noqa: E402
from chorus_ros.core.memory import rss_bytes, trim_heap  # noqa: E402


def scene(n: int, seed: int = 0) -> GaussianArrays:
    """A flat layer of n Gaussians, 20K per 16 m^2."""
    g = torch.Generator().manual_seed(seed)
    side = (n / 20000) ** 0.5 * 4
    m = torch.rand(n, 3, generator=g) * torch.tensor([side, side, 0.05])
    return GaussianArrays(m, torch.randn(n, 1, 3, generator=g), torch.randn(n, generator=g), torch.full((n, 3), -3.5),
                          torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.arange(n))


def main(big_n: int) -> None:
    torch.set_num_threads(1)
    mib = lambda: rss_bytes() / 2**20  # noqa: E731
    model = ChorusEncoder(EncoderConfig()).eval()
    gm = GaussianMap(MapConfig(sh_degree=0))
    inc = IncrementalEncoder(model, gm)
    gm.replace_all(scene(20000))
    inc.update()
    gc.collect()
    print(f"20K: {mib():.0f} MiB", flush=True)
    gm.replace_all(scene(big_n, 1))
    t = time.time()
    inc.update()
    print(f"{big_n}: {mib():.0f} MiB ({time.time() - t:.0f} s), caches {inc.cache_bytes() / 2**20:.0f} MiB", flush=True)
    gm.replace_all(scene(20000))
    inc.update()
    gc.collect()
    print(f"back to 20K: {mib():.0f} MiB, caches {inc.cache_bytes() / 2**20:.0f} MiB", flush=True)
    trim_heap()
    print(f"after trim_heap(): {mib():.0f} MiB", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400_000)
