"""The live Gaussian map store.

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

Costs: ``add``/``update``/``remove``/``apply_delta`` of k Gaussians cost O(k) (Python dict
look-ups of the ids plus index ops on k rows); storage grows by doubling (amortised O(1) per
Gaussian). ``replace_all``, ``load`` and creating a new attribute cost O(n).

Parameters are stored as float32, raw (pre-activation) as in :class:`GaussianArrays`. Incoming
Gaussians must be finite (sanitise first, e.g. with :func:`chorus_ros.core.ply.sanitize_gaussians`)
and carry ids in ``[0, 2^32 - 1]``, unique within one call.

Thread safety: mutating calls take :attr:`GaussianMap.lock` (an ``RLock``); readers that keep
the views returned by :meth:`GaussianMap.arrays` across calls should hold it too.

Example::

    m = GaussianMap(MapConfig(sh_degree=0, block_size=0.5))
    m.add(g)                                   # g: GaussianArrays with ids
    m.apply_delta(upserts=g2, removed_ids=torch.tensor([3, 4]))
    region = m.take_dirty()                    # blocks to re-encode
    m.save("map.safetensors"); m2 = GaussianMap.load("map.safetensors")
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from chorus_ros.core.errors import CheckpointError, InvalidInputError, MapCapacityError, UnknownIdError
from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["MapConfig", "GaussianMap", "DirtyRegion", "DeltaResult", "UnknownAttributeError"]

_UINT32_MAX = 2**32 - 1
_PARAMS = ("means", "sh", "opacities", "log_scales", "quats")
_FORMAT = "chorus_ros.GaussianMap"
_FORMAT_VERSION = 1
_ATTR_PREFIX = "attr."


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
    """True when the whole map must be treated as changed (snapshot replaced, map loaded).
    ``blocks`` then lists only blocks touched by incremental changes after that event."""

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not self.full and self.blocks.shape[0] == 0


@dataclass
class DeltaResult:
    """Outcome of :meth:`GaussianMap.apply_delta`."""

    added: int
    updated: int
    removed: int
    version: int


class UnknownAttributeError(KeyError):
    """:meth:`GaussianMap.attribute` was asked for an attribute the map does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown attribute"


@dataclass
class _Incoming:
    """Validated incoming Gaussians, on the map device, float32, SH at the map degree."""

    params: dict[str, torch.Tensor]
    ids: torch.Tensor
    ids_list: list[int]
    extras: dict[str, torch.Tensor]

    def subset(self, rows: torch.Tensor) -> "_Incoming":
        rl = rows.tolist()
        return _Incoming({k: v[rows] for k, v in self.params.items()}, self.ids[rows],
                         [self.ids_list[i] for i in rl], {k: v[rows] for k, v in self.extras.items()})


def _few(xs, k: int = 10) -> str:
    xs = list(xs)
    return str(xs[:k]) + (f" (and {len(xs) - k} more)" if len(xs) > k else "")


def _nonfinite(t: torch.Tensor) -> int:
    """Number of non-finite values (numpy on CPU: torch.isfinite is much slower there)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        a = t.detach().numpy()
        return 0 if np.isfinite(a).all() else int((~np.isfinite(a)).sum())
    return int((~torch.isfinite(t)).sum())


def _validate_config(cfg: MapConfig) -> None:
    if not isinstance(cfg, MapConfig):
        raise InvalidInputError(f"config must be a MapConfig, got {type(cfg).__name__}")
    if not isinstance(cfg.capacity, int) or cfg.capacity < 0:
        raise InvalidInputError(f"MapConfig.capacity must be an int >= 0, got {cfg.capacity!r}")
    if cfg.sh_degree not in (0, 1, 2, 3):
        raise InvalidInputError(f"MapConfig.sh_degree must be 0..3, got {cfg.sh_degree!r}")
    if not (isinstance(cfg.block_size, (int, float)) and np.isfinite(cfg.block_size) and cfg.block_size > 0):
        raise InvalidInputError(f"MapConfig.block_size must be a finite number > 0, got {cfg.block_size!r}")
    if not isinstance(cfg.initial_capacity, int) or cfg.initial_capacity < 0:
        raise InvalidInputError(f"MapConfig.initial_capacity must be an int >= 0, got {cfg.initial_capacity!r}")
    try:
        torch.empty(0, device=cfg.device)
    except (RuntimeError, ValueError) as e:
        raise InvalidInputError(f"MapConfig.device {cfg.device!r} is not usable: {e}") from e


class GaussianMap:
    """A growing/shrinking set of Gaussians with stable ids. See the module docstring."""

    def __init__(self, config: MapConfig | None = None) -> None:
        cfg = config if config is not None else MapConfig()
        _validate_config(cfg)
        self.config = cfg
        self._device = torch.device(cfg.device)
        self._k = (cfg.sh_degree + 1) ** 2
        self._n = 0
        self._version = 0
        self._slot_of: dict[int, int] = {}
        self._store: dict[str, torch.Tensor] = self._empty_store(self._initial_alloc())
        self._attrs: dict[str, torch.Tensor] = {}
        self._lock = threading.RLock()
        # dirty tracking
        self._dirty: list[torch.Tensor] = []
        self._dirty_rows = 0
        self._dirty_compact_at = 65536
        self._dirty_full = False
        self._dirty_from = 0

    # ------------------------------------------------------------ storage helpers
    def _initial_alloc(self) -> int:
        return max(1, min(self.config.initial_capacity, self.config.capacity))

    def _alloc_for(self, m: int, start: int) -> int:
        """Doubling growth from ``start`` until ``m`` fits, capped at ``capacity``."""
        a = max(1, start)
        while a < m:
            a *= 2
        return max(min(a, self.config.capacity), m, 1)

    def _empty_store(self, alloc: int) -> dict[str, torch.Tensor]:
        d = self._device
        return {
            "means": torch.empty(alloc, 3, dtype=torch.float32, device=d),
            "sh": torch.empty(alloc, self._k, 3, dtype=torch.float32, device=d),
            "opacities": torch.empty(alloc, dtype=torch.float32, device=d),
            "log_scales": torch.empty(alloc, 3, dtype=torch.float32, device=d),
            "quats": torch.empty(alloc, 4, dtype=torch.float32, device=d),
            "ids": torch.empty(alloc, dtype=torch.int64, device=d),
        }

    @property
    def _alloc(self) -> int:
        return int(self._store["ids"].shape[0])

    def _reserve(self, m: int) -> None:
        """Make room for ``m`` Gaussians (amortised doubling; copies only slots [0, n))."""
        if m <= self._alloc:
            return
        new = self._alloc_for(m, self._alloc)
        n = self._n
        for name, t in list(self._store.items()):
            t2 = torch.empty((new,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
            t2[:n] = t[:n]
            self._store[name] = t2
        for name, t in self._attrs.items():
            t2 = torch.zeros((new,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
            t2[:n] = t[:n]
            self._attrs[name] = t2

    # --------------------------------------------------------------- size / identity
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"GaussianMap(n={self._n}, version={self._version}, sh_degree={self.sh_degree}, "
                f"attributes={self.attribute_names()}, device={self._device})")

    @property
    def version(self) -> int:
        """Increases by one with every successful mutating call."""
        return self._version

    @property
    def sh_degree(self) -> int:
        return self.config.sh_degree

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def lock(self) -> threading.RLock:
        """Re-entrant lock taken by every mutating call."""
        return self._lock

    # ------------------------------------------------------------------- reading
    def arrays(self) -> GaussianArrays:
        """Views (no copy) of slots [0, n): params, ``ids`` and every attribute in ``extras``."""
        n = self._n
        s = self._store
        return GaussianArrays(s["means"][:n], s["sh"][:n], s["opacities"][:n], s["log_scales"][:n],
                              s["quats"][:n], s["ids"][:n], {k: v[:n] for k, v in self._attrs.items()})

    def _ids_arg(self, ids: torch.Tensor, what: str) -> list[int]:
        if not isinstance(ids, torch.Tensor):
            raise InvalidInputError(f"{what} must be a torch.Tensor of ids, got {type(ids).__name__}")
        if ids.ndim != 1:
            raise InvalidInputError(f"{what} must be 1-D, got shape {tuple(ids.shape)}")
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise InvalidInputError(f"{what} must have an integer dtype, got {ids.dtype}")
        lst = ids.tolist()
        if not lst:
            return lst
        if ids.device.type == "cpu" and len(lst) > 4096:  # numpy: faster than Python or torch here
            a = ids.detach().numpy()
            lo, hi = int(a.min()), int(a.max())
        else:
            lo, hi = min(lst), max(lst)
        if lo < 0 or hi > _UINT32_MAX:
            bad = [i for i in lst if i < 0 or i > _UINT32_MAX]
            raise InvalidInputError(f"{what} must be uint32 values in [0, 2^32-1]; bad: {_few(bad)}")
        return lst

    def _slots_list(self, ids_list: list[int]) -> list[int]:
        get = self._slot_of.get
        return [get(i, -1) for i in ids_list]

    def slots_of(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] int64 slots of ``ids``; raises UnknownIdError naming (up to 10) unknown ids."""
        lst = self._ids_arg(ids, "ids")
        slots = self._slots_list(lst)
        if -1 in slots:
            unknown = [i for i, s in zip(lst, slots) if s < 0]
            raise UnknownIdError(f"{len(unknown)} ids not in the map: {_few(unknown)}")
        return torch.tensor(slots, dtype=torch.int64, device=self._device)

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] bool."""
        lst = self._ids_arg(ids, "ids")
        d = self._slot_of
        return torch.tensor([i in d for i in lst], dtype=torch.bool, device=self._device)

    def gather(self, ids: torch.Tensor) -> GaussianArrays:
        """Copy of the Gaussians ``ids`` (params, ids and attributes), in the order given."""
        slots = self.slots_of(ids)
        return self.arrays().index(slots)

    # --------------------------------------------------------------- validation
    def _check_missing_arg(self, missing: str) -> None:
        if missing not in ("error", "ignore"):
            raise InvalidInputError(f"missing must be 'error' or 'ignore', got {missing!r}")

    def _prepare(self, g: GaussianArrays, what: str, *, check_dups: bool = True,
                 default_ids: bool = False, match_attrs: bool = True) -> _Incoming:
        """Validate ``g`` fully (raises before any change) and bring it to the map's layout."""
        if not isinstance(g, GaussianArrays):
            raise InvalidInputError(f"{what} must be GaussianArrays, got {type(g).__name__}")
        g.validate()
        n = len(g)
        if g.ids is None:
            if not default_ids:
                raise InvalidInputError(f"{what}: GaussianArrays.ids is required (stable Gaussian ids)")
            ids = torch.arange(n, dtype=torch.int64)
        else:
            ids = g.ids
        ids_list = self._ids_arg(ids, f"{what} ids")
        if check_dups and len(set(ids_list)) != n:
            dups = [i for i, c in Counter(ids_list).items() if c > 1]
            raise InvalidInputError(f"{what}: duplicated ids within one call: {_few(dups)}")
        params = {}
        bad = {}
        for name in _PARAMS:
            t = getattr(g, name)
            if not t.is_floating_point():
                raise InvalidInputError(f"{what}: {name} must be floating point, got {t.dtype}")
            t = t.detach().to(self._device, torch.float32)
            c = _nonfinite(t)
            if c:
                bad[name] = c
            params[name] = t
        if bad:
            raise InvalidInputError(
                f"{what}: non-finite values in incoming Gaussians (count per field: {bad}); sanitise first, "
                "e.g. chorus_ros.core.ply.sanitize_gaussians")
        sh = params["sh"]
        if sh.shape[1] != self._k:
            kk = min(sh.shape[1], self._k)
            sh2 = torch.zeros(n, self._k, 3, dtype=torch.float32, device=self._device)
            sh2[:, :kk] = sh[:, :kk]
            params["sh"] = sh2
        extras = {}
        for name, v in g.extras.items():
            if not isinstance(name, str) or not name:
                raise InvalidInputError(f"{what}: extras names must be non-empty strings, got {name!r}")
            if not isinstance(v, torch.Tensor) or v.ndim < 1:
                raise InvalidInputError(f"{what}: extras[{name!r}] must be a tensor [N, ...]")
            cur = self._attrs.get(name) if match_attrs else None
            if cur is not None:
                if tuple(v.shape[1:]) != tuple(cur.shape[1:]):
                    raise InvalidInputError(f"{what}: extras[{name!r}] has per-Gaussian shape {tuple(v.shape[1:])}, "
                                            f"the map attribute has {tuple(cur.shape[1:])}")
                if not torch.can_cast(v.dtype, cur.dtype):
                    raise InvalidInputError(f"{what}: extras[{name!r}] dtype {v.dtype} cannot be cast to the map "
                                            f"attribute dtype {cur.dtype}")
                v = v.detach().to(self._device, cur.dtype)
            else:
                v = v.detach().to(self._device)
            extras[name] = v
        return _Incoming(params, ids.to(self._device, torch.int64), ids_list, extras)

    def _check_capacity(self, n_after: int, what: str) -> None:
        if n_after > self.config.capacity:
            raise MapCapacityError(f"{what} would make the map hold {n_after} Gaussians, above its capacity "
                                   f"{self.config.capacity} (it holds {self._n}); nothing was changed")

    # ------------------------------------------------------------------ dirty
    def block_of(self, means: torch.Tensor) -> torch.Tensor:
        """[k, 3] int64 block coordinates of positions [k, 3]."""
        if not isinstance(means, torch.Tensor) or means.ndim != 2 or means.shape[1] != 3:
            raise InvalidInputError(f"means must be a [k, 3] tensor, got "
                                    f"{tuple(means.shape) if isinstance(means, torch.Tensor) else type(means).__name__}")
        return torch.floor(means / self.config.block_size).to(torch.int64)

    def _mark(self, means: torch.Tensor) -> None:
        if means.shape[0] == 0:
            return
        self._dirty.append(self.block_of(means))
        self._dirty_rows += means.shape[0]
        if self._dirty_rows > self._dirty_compact_at:  # keep memory bounded; amortised O(1)
            u = torch.unique(torch.cat(self._dirty), dim=0)
            self._dirty = [u]
            self._dirty_rows = u.shape[0]
            self._dirty_compact_at = max(65536, 4 * u.shape[0])

    def _mark_full(self) -> None:
        self._dirty = []
        self._dirty_rows = 0
        self._dirty_compact_at = 65536
        self._dirty_full = True

    def take_dirty(self) -> DirtyRegion:
        """Return the changes since the last call and reset tracking."""
        with self._lock:
            if self._dirty:
                blocks = torch.unique(torch.cat(self._dirty), dim=0)
            else:
                blocks = torch.empty(0, 3, dtype=torch.int64, device=self._device)
            r = DirtyRegion(blocks, float(self.config.block_size), self._dirty_from, self._version,
                            self._dirty_full)
            self._dirty = []
            self._dirty_rows = 0
            self._dirty_compact_at = 65536
            self._dirty_full = False
            self._dirty_from = self._version
            return r

    # --------------------------------------------------------------- mutation core
    def _ensure_attr(self, name: str, like: torch.Tensor) -> torch.Tensor:
        t = self._attrs.get(name)
        if t is None:
            t = torch.zeros((self._alloc,) + tuple(like.shape[1:]), dtype=like.dtype, device=self._device)
            self._attrs[name] = t
        return t

    def _write(self, slots: torch.Tensor | slice, inc: _Incoming, fresh: bool) -> None:
        """Write ``inc`` at ``slots``; ``fresh`` rows get zeros in attributes they do not carry."""
        s = self._store
        for name in _PARAMS:
            s[name][slots] = inc.params[name]
        s["ids"][slots] = inc.ids
        for name, v in inc.extras.items():
            self._ensure_attr(name, v)[slots] = v
        if fresh:
            for name, t in self._attrs.items():
                if name not in inc.extras:
                    t[slots] = 0

    def _add(self, inc: _Incoming) -> None:
        n, k = self._n, len(inc.ids_list)
        if k == 0:
            for name, v in inc.extras.items():  # an empty batch still declares its attributes
                self._ensure_attr(name, v)
            return
        self._reserve(n + k)
        self._write(slice(n, n + k), inc, fresh=True)
        self._slot_of.update(zip(inc.ids_list, range(n, n + k)))
        self._n = n + k
        self._mark(inc.params["means"])

    def _update(self, inc: _Incoming, slots_list: list[int]) -> None:
        if not slots_list:
            for name, v in inc.extras.items():
                self._ensure_attr(name, v)
            return
        slots = torch.tensor(slots_list, dtype=torch.int64, device=self._device)
        self._mark(self._store["means"][slots])
        self._write(slots, inc, fresh=False)
        self._mark(inc.params["means"])

    def _remove(self, ids_list: list[int], slots_list: list[int]) -> None:
        """Swap-remove: surviving Gaussians of the tail [n-k, n) fill the holes below n-k."""
        k = len(slots_list)
        if k == 0:
            return
        n = self._n
        n_new = n - k
        dev = self._device
        S = torch.tensor(slots_list, dtype=torch.int64, device=dev)
        self._mark(self._store["means"][S])
        keep_tail = torch.ones(k, dtype=torch.bool, device=dev)
        keep_tail[S[S >= n_new] - n_new] = False
        movers = torch.arange(n_new, n, device=dev)[keep_tail]
        holes = S[S < n_new]
        assert movers.shape[0] == holes.shape[0], "swap-remove pairing broken"
        d = self._slot_of
        for i in ids_list:
            del d[i]
        if holes.shape[0]:
            for t in list(self._store.values()) + list(self._attrs.values()):
                t[holes] = t[movers]
            d.update(zip(self._store["ids"][holes].tolist(), holes.tolist()))
        self._n = n_new

    def _removal(self, removed_ids: torch.Tensor, missing: str, what: str) -> tuple[list[int], list[int]]:
        """Validated (ids, slots) to remove; unknown ids raise or are skipped per ``missing``."""
        lst = self._ids_arg(removed_ids, what)
        if len(set(lst)) != len(lst):
            dups = [i for i, c in Counter(lst).items() if c > 1]
            raise InvalidInputError(f"{what}: duplicated ids within one call: {_few(dups)}")
        slots = self._slots_list(lst)
        if -1 in slots:
            if missing == "error":
                unknown = [i for i, s in zip(lst, slots) if s < 0]
                raise UnknownIdError(f"{what}: {len(unknown)} ids not in the map: {_few(unknown)}")
            pairs = [(i, s) for i, s in zip(lst, slots) if s >= 0]
            lst, slots = [p[0] for p in pairs], [p[1] for p in pairs]
        return lst, slots

    # ------------------------------------------------------------------ mutation
    def add(self, g: GaussianArrays) -> None:
        """Insert Gaussians with new unique ids (ids required)."""
        with self._lock:
            inc = self._prepare(g, "add")
            present = [i for i, s in zip(inc.ids_list, self._slots_list(inc.ids_list)) if s >= 0]
            if present:
                raise InvalidInputError(f"add: {len(present)} ids are already in the map (use update or "
                                        f"apply_delta to overwrite): {_few(present)}")
            self._check_capacity(self._n + len(inc.ids_list), f"add of {len(inc.ids_list)} Gaussians")
            self._add(inc)
            self._version += 1

    def update(self, g: GaussianArrays) -> None:
        """Overwrite parameters (and given extras) of existing ids."""
        with self._lock:
            inc = self._prepare(g, "update")
            slots = self._slots_list(inc.ids_list)
            if -1 in slots:
                unknown = [i for i, s in zip(inc.ids_list, slots) if s < 0]
                raise UnknownIdError(f"update: {len(unknown)} ids not in the map: {_few(unknown)}")
            self._update(inc, slots)
            self._version += 1

    def remove(self, ids: torch.Tensor, *, missing: str = "error") -> int:
        """Remove ids; ``missing='error'`` raises UnknownIdError, 'ignore' skips unknown ones.
        Returns the number removed."""
        with self._lock:
            self._check_missing_arg(missing)
            lst, slots = self._removal(ids, missing, "remove")
            self._remove(lst, slots)
            self._version += 1
            return len(lst)

    def apply_delta(self, upserts: GaussianArrays | None, removed_ids: torch.Tensor | None, *,
                    missing: str = "error") -> DeltaResult:
        """Atomic: remove ``removed_ids`` then upsert (add new / update existing) ``upserts``.

        An id both removed and upserted is re-added as a new Gaussian (attributes reset to zero).
        ``missing`` applies to ``removed_ids`` as in :meth:`remove`."""
        with self._lock:
            self._check_missing_arg(missing)
            rm_ids, rm_slots = ([], []) if removed_ids is None else self._removal(removed_ids, missing,
                                                                                   "apply_delta removed_ids")
            inc = None if upserts is None else self._prepare(upserts, "apply_delta upserts")
            is_new: list[bool] = []
            if inc is not None:
                rm_set = set(rm_ids)
                get = self._slot_of.get
                is_new = [get(i) is None or i in rm_set for i in inc.ids_list]
            n_new = sum(is_new)
            self._check_capacity(self._n - len(rm_ids) + n_new,
                                 f"apply_delta (+{n_new} new, -{len(rm_ids)} removed)")
            # --- all checks passed: mutate
            self._remove(rm_ids, rm_slots)
            n_upd = 0
            if inc is not None:
                if n_new == len(is_new):
                    self._add(inc)
                else:
                    new_rows = [j for j, b in enumerate(is_new) if b]
                    upd_rows = [j for j, b in enumerate(is_new) if not b]
                    dev = self._device
                    upd = inc.subset(torch.tensor(upd_rows, dtype=torch.int64, device=dev))
                    self._update(upd, self._slots_list(upd.ids_list))
                    if new_rows:
                        self._add(inc.subset(torch.tensor(new_rows, dtype=torch.int64, device=dev)))
                    n_upd = len(upd_rows)
            self._version += 1
            return DeltaResult(added=n_new, updated=n_upd, removed=len(rm_ids), version=self._version)

    def replace_all(self, g: GaussianArrays) -> None:
        """Full snapshot: the map becomes exactly ``g`` (marks the whole map dirty).

        Attributes become exactly ``g.extras``. ``g.ids = None`` means ids ``0..N-1``."""
        with self._lock:
            inc = self._prepare(g, "replace_all", check_dups=False, default_ids=True, match_attrs=False)
            n = len(inc.ids_list)
            self._check_capacity(n, f"replace_all with {n} Gaussians")
            slot_of = dict(zip(inc.ids_list, range(n)))
            if len(slot_of) != n:
                dups = [i for i, c in Counter(inc.ids_list).items() if c > 1]
                raise InvalidInputError(f"replace_all: duplicated ids within one call: {_few(dups)}")
            alloc = self._alloc_for(n, self._initial_alloc())
            store = self._empty_store(alloc)
            for name in _PARAMS:
                store[name][:n] = inc.params[name]
            store["ids"][:n] = inc.ids
            attrs = {}
            for name, v in inc.extras.items():
                t = torch.empty((alloc,) + tuple(v.shape[1:]), dtype=v.dtype, device=self._device)
                t[:n] = v
                t[n:] = 0
                attrs[name] = t
            self._store, self._attrs, self._slot_of, self._n = store, attrs, slot_of, n
            self._version += 1
            self._mark_full()

    def clear(self) -> None:
        """Remove every Gaussian (attribute names are kept); marks the whole map dirty."""
        with self._lock:
            self._n = 0
            self._slot_of = {}
            self._version += 1
            self._mark_full()

    # ---------------------------------------------------------------- attributes
    def set_attribute(self, name: str, values: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """Create/overwrite attribute ``name`` ([n, ...] for all, or [k, ...] at ``slots``).
        Setting attributes does not bump ``version`` nor mark anything dirty."""
        with self._lock:
            if not isinstance(name, str) or not name:
                raise InvalidInputError(f"attribute name must be a non-empty string, got {name!r}")
            if not isinstance(values, torch.Tensor) or values.ndim < 1:
                raise InvalidInputError(f"attribute {name!r}: values must be a tensor [n or k, ...]")
            if slots is None:
                if values.shape[0] != self._n:
                    raise InvalidInputError(f"attribute {name!r}: values have {values.shape[0]} rows, the map "
                                            f"holds {self._n} Gaussians (pass slots= for a subset)")
                t = torch.zeros((self._alloc,) + tuple(values.shape[1:]), dtype=values.dtype, device=self._device)
                t[: self._n] = values.detach().to(self._device)
                self._attrs[name] = t
                return
            if not isinstance(slots, torch.Tensor) or slots.ndim != 1 or slots.is_floating_point() \
                    or slots.dtype == torch.bool:
                raise InvalidInputError(f"attribute {name!r}: slots must be a 1-D integer tensor")
            sl = slots.tolist()
            if len(sl) != values.shape[0]:
                raise InvalidInputError(f"attribute {name!r}: {values.shape[0]} value rows for {len(sl)} slots")
            if sl and (min(sl) < 0 or max(sl) >= self._n):
                raise InvalidInputError(f"attribute {name!r}: slots must be in [0, {self._n}), got range "
                                        f"[{min(sl)}, {max(sl)}]")
            if len(set(sl)) != len(sl):
                raise InvalidInputError(f"attribute {name!r}: duplicated slots")
            cur = self._attrs.get(name)
            if cur is not None:
                if tuple(values.shape[1:]) != tuple(cur.shape[1:]):
                    raise InvalidInputError(f"attribute {name!r}: per-Gaussian shape {tuple(values.shape[1:])} "
                                            f"differs from the stored {tuple(cur.shape[1:])}")
                if not torch.can_cast(values.dtype, cur.dtype):
                    raise InvalidInputError(f"attribute {name!r}: dtype {values.dtype} cannot be cast to the "
                                            f"stored {cur.dtype}")
            t = self._ensure_attr(name, values)
            t[slots.to(self._device, torch.int64)] = values.detach().to(self._device, t.dtype)

    def attribute(self, name: str) -> torch.Tensor:
        """[n, ...] view of attribute ``name``; KeyError lists known attributes."""
        t = self._attrs.get(name)
        if t is None:
            raise UnknownAttributeError(f"unknown map attribute {name!r}; known: {self.attribute_names()}")
        return t[: self._n]

    def attribute_names(self) -> list[str]:
        return sorted(self._attrs)

    def drop_attribute(self, name: str) -> None:
        with self._lock:
            if name not in self._attrs:
                raise UnknownAttributeError(f"unknown map attribute {name!r}; known: {self.attribute_names()}")
            del self._attrs[name]

    # --------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        """Write ids, params, attributes (safetensors) and version + config (JSON metadata)."""
        from safetensors.torch import save_file

        with self._lock:
            n = self._n
            tensors = {k: v[:n].detach().cpu().contiguous() for k, v in self._store.items()}
            for k, v in self._attrs.items():
                tensors[_ATTR_PREFIX + k] = v[:n].detach().cpu().contiguous()
            meta = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "version": self._version, "n": n,
                    "config": asdict(self.config), "attributes": sorted(self._attrs)}
            save_file(tensors, str(path), metadata={"chorus_map": json.dumps(meta)})

    @classmethod
    def load(cls, path: str, config: MapConfig | None = None) -> "GaussianMap":
        """Read a map written by :meth:`save`. ``config=None`` uses the saved config; a given config
        may change device, capacity, block size or SH degree (truncate / zero-pad).

        Raises:
            CheckpointError: missing file, not a map file, missing or unexpected tensors (listed).
            MapCapacityError: the saved map does not fit ``config.capacity``.
        """
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"map file {str(path)!r} does not exist")
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                raw_meta = (f.metadata() or {}).get("chorus_map")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {e}") from e
        if raw_meta is None:
            raise CheckpointError(f"{str(path)!r} has no 'chorus_map' metadata: not a GaussianMap file")
        meta = json.loads(raw_meta)
        if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
            raise CheckpointError(f"{str(path)!r}: unsupported map format {meta.get('format')!r} "
                                  f"v{meta.get('format_version')!r} (expected {_FORMAT} v{_FORMAT_VERSION})")
        expected = set(_PARAMS) | {"ids"} | {_ATTR_PREFIX + a for a in meta["attributes"]}
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{str(path)!r}: missing tensors {missing}, unexpected tensors {unexpected}")
        if config is None:
            known = {f.name for f in fields(MapConfig)}
            saved = meta["config"]
            if set(saved) - known:
                raise CheckpointError(f"{str(path)!r}: saved config has unknown keys {sorted(set(saved) - known)}")
            config = MapConfig(**saved)
        m = cls(config)
        g = GaussianArrays(tensors["means"], tensors["sh"], tensors["opacities"], tensors["log_scales"],
                           tensors["quats"], tensors["ids"],
                           {a: tensors[_ATTR_PREFIX + a] for a in meta["attributes"]})
        if len(g) != meta["n"]:
            raise CheckpointError(f"{str(path)!r}: metadata says {meta['n']} Gaussians, tensors hold {len(g)}")
        m.replace_all(g)
        m._version = int(meta["version"])
        m._dirty_from = m._version
        return m
