"""The live Gaussian map store. CONTRACT STUB: signatures and semantics are fixed; bodies are
being implemented (see the foundation issue). Other components code against this API.

Design:
* Structure of arrays on one device, always densely packed in slots ``[0, n)``; removal moves
  the last Gaussian into the hole (swap-remove), so add/update/remove cost O(change).
* Stable uint32 ids (held in int64 tensors) map to slots through a dict.
* Per-Gaussian *attributes* (encoder features, class scores, instance ids, or PLY extras such
  as ``label``) live in the map and move with their Gaussian; new Gaussians get zeros.
* ``version`` increases by one with every successful mutating call.
* Dirty tracking: every changed Gaussian's old and new block (``floor(mean / block_size)``) is
  recorded until the consumer (the incremental encoder) calls :meth:`GaussianMap.take_dirty`.
* Every mutating call validates all of its input first and raises before changing anything,
  so bad input never loses map data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["MapConfig", "GaussianMap", "DirtyRegion", "DeltaResult"]


@dataclass
class MapConfig:
    """Configuration of the Gaussian map store (ROS parameters ``map.*``)."""

    capacity: int = 2_000_000
    """Maximum number of Gaussians; exceeding it raises MapCapacityError and changes nothing."""
    sh_degree: int = 3
    """SH degree stored; incoming Gaussians are truncated or zero-padded to it."""
    block_size: float = 1.0
    """Edge of the cubic blocks used for dirty-region tracking, metres."""
    initial_capacity: int = 65536
    """Slots allocated up front; storage doubles as needed up to ``capacity``."""
    device: str = "cpu"
    """Torch device holding the map ('cpu', 'cuda', 'cuda:0')."""


@dataclass
class DirtyRegion:
    """What changed between two map versions."""

    blocks: torch.Tensor
    """[B, 3] int64 block coordinates (``floor(mean / block_size)``) touched by any change,
    including the *old* positions of moved or removed Gaussians."""
    block_size: float
    from_version: int
    to_version: int
    full: bool = False
    """True when the whole map must be treated as changed (snapshot replaced, map loaded)."""


@dataclass
class DeltaResult:
    """Outcome of :meth:`GaussianMap.apply_delta`."""

    added: int
    updated: int
    removed: int
    version: int


class GaussianMap:
    """A growing/shrinking set of Gaussians with stable ids. See the module docstring."""

    def __init__(self, config: MapConfig | None = None) -> None:
        raise NotImplementedError

    # --- size / identity
    def __len__(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def sh_degree(self) -> int: ...
    @property
    def device(self) -> torch.device: ...

    # --- reading
    def arrays(self) -> GaussianArrays:
        """Views (no copy) of slots [0, n): params, ``ids`` and every attribute in ``extras``."""
    def slots_of(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] int64 slots of ``ids``; raises UnknownIdError naming (up to 10) unknown ids."""
    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] bool."""

    # --- mutation (each validates everything first; bumps version once)
    def add(self, g: GaussianArrays) -> None:
        """Insert Gaussians with new unique ids (ids required)."""
    def update(self, g: GaussianArrays) -> None:
        """Overwrite parameters (and given extras) of existing ids."""
    def remove(self, ids: torch.Tensor, *, missing: str = "error") -> int:
        """Remove ids; ``missing='error'`` raises UnknownIdError, 'ignore' skips unknown ones."""
    def apply_delta(self, upserts: GaussianArrays | None, removed_ids: torch.Tensor | None, *,
                    missing: str = "error") -> DeltaResult:
        """Atomic: remove ``removed_ids`` then upsert (add new / update existing) ``upserts``."""
    def replace_all(self, g: GaussianArrays) -> None:
        """Full snapshot: the map becomes exactly ``g`` (marks the whole map dirty)."""
    def clear(self) -> None: ...

    # --- attributes (derived per-Gaussian data that travels with its Gaussian)
    def set_attribute(self, name: str, values: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """Create/overwrite attribute ``name`` ([n, ...] for all, or [k, ...] at ``slots``).
        Setting attributes does not bump ``version`` nor mark anything dirty."""
    def attribute(self, name: str) -> torch.Tensor:
        """[n, ...] view of attribute ``name``; KeyError lists known attributes."""
    def attribute_names(self) -> list[str]: ...
    def drop_attribute(self, name: str) -> None: ...

    # --- dirty tracking
    def take_dirty(self) -> DirtyRegion:
        """Return the changes since the last call and reset tracking."""
    def block_of(self, means: torch.Tensor) -> torch.Tensor:
        """[k, 3] int64 block coordinates of positions [k, 3]."""

    # --- persistence (safetensors + JSON metadata; attributes included)
    def save(self, path: str) -> None: ...
    @classmethod
    def load(cls, path: str, config: MapConfig | None = None) -> "GaussianMap": ...
