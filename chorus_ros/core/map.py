"""The live Gaussian map store.

Design:
* Structure of arrays on one device, always densely packed in slots ``[0, n)``; removal moves
  the last Gaussian into the hole (swap-remove), so add/update/remove cost O(change).
* Stable uint32 ids (held in int64 tensors) map to slots through :class:`IdIndex`, a numpy
  open-addressing hash table queried a whole batch at a time (no per-id Python work).
* Per-Gaussian *attributes* (encoder features, class scores, instance ids, or PLY extras such
  as ``label``) live in the map and move with their Gaussian; new Gaussians get zeros.
* ``version`` increases by one with every successful mutating call.
* Dirty tracking: every changed Gaussian's old and new block (``floor(mean / block_size)``) is
  recorded until the consumer (the incremental encoder) calls :meth:`GaussianMap.take_dirty`.
* Every mutating call validates all of its input first and raises before changing anything,
  so bad input never loses map data.

Costs: ``add``/``update``/``remove``/``apply_delta`` of k Gaussians cost O(k) (vectorised hash
look-ups of the ids plus index ops on k rows); storage and the id index grow by doubling
(amortised O(1) per Gaussian). ``replace_all``, ``load`` and creating a new attribute cost O(n).

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from chorus_ros.core.errors import CheckpointError, InvalidInputError, MapCapacityError, UnknownIdError
from chorus_ros.core.gaussians import GaussianArrays

__all__ = ["MapConfig", "GaussianMap", "DirtyRegion", "DeltaResult", "UnknownAttributeError", "IdIndex"]

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
    max_abs_coordinate: float = 5000.0
    """Largest accepted |x|, |y| or |z| of a Gaussian mean, metres; a Gaussian beyond it is refused (the whole update with it). The perception pipeline refuses a value its encoder's voxel keys cannot cover (chorus_ros.core.encoder.incremental.max_supported_coordinate: about 13 km at 5 cm voxels)."""
    min_scale: float = 0.0
    """Smallest accepted Gaussian scale exp(log_scale) on any axis, metres (0: no lower limit; tiny Gaussians are harmless, they just vanish)."""
    max_scale: float = 1e4
    """Largest accepted Gaussian scale exp(log_scale) on any axis, metres."""


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


_EMPTY = -1
_TOMB = -2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class IdIndex:
    """Id -> slot map: an open-addressing hash table in numpy, used a batch at a time.

    Linear probing over ``keys``/``vals`` int64 arrays, Fibonacci hashing, load (live entries +
    tombstones) kept <= 1/2 by doubling rehashes. A batch of k ids costs O(k) expected: a few
    vectorised probe rounds, each a gather over the ids still unresolved. Faster than a Python
    dict both to build (1M ids) and to query (1K ids), and free of per-id interpreter work.
    """

    def __init__(self, expected: int = 0) -> None:
        self._alloc(self._cap_for(expected))

    @staticmethod
    def _cap_for(m: int) -> int:
        cap = 16
        while cap < 3 * m + 3:  # start at load <= 1/3: room to grow before the first rehash
            cap *= 2
        return cap

    def _alloc(self, cap: int) -> None:
        self.keys = np.full(cap, _EMPTY, dtype=np.int64)
        self.vals = np.zeros(cap, dtype=np.int64)
        self._mask = cap - 1
        self._shift = np.uint64(64 - (cap.bit_length() - 1))
        self.n = 0
        self._used = 0  # live entries + tombstones

    def __len__(self) -> int:
        return self.n

    def _hash(self, ids: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((ids.astype(np.uint64) * _GOLDEN) >> self._shift).astype(np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """[k] table positions of ``ids`` (-1 where absent)."""
        out = np.full(ids.shape[0], -1, dtype=np.int64)
        idx, cur, pos = np.arange(ids.shape[0]), ids, self._hash(ids)
        keys, mask = self.keys, self._mask
        while idx.size:
            k = keys[pos]
            hit = k == cur
            out[idx[hit]] = pos[hit]
            go = ~hit & (k != _EMPTY)
            idx, cur, pos = idx[go], cur[go], (pos[go] + 1) & mask
        return out

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """[k] int64 slots of ``ids`` (-1 where absent)."""
        p = self.find(ids)
        return np.where(p >= 0, self.vals[np.maximum(p, 0)], -1)

    def insert(self, ids: np.ndarray, slots: np.ndarray) -> bool:
        """Insert ids absent from the table. Returns False when ``ids`` holds duplicates (the
        table is then inconsistent: only :meth:`build` relies on this, on a fresh table)."""
        k = ids.shape[0]
        if self._used + k > (self._mask + 1) // 2:
            self._rehash(self.n + k)
        idx, cur, pos = np.arange(k), ids, self._hash(ids)
        keys, vals, mask = self.keys, self.vals, self._mask
        while idx.size:
            kk = keys[pos]
            free = (kk == _EMPTY) | (kk == _TOMB)
            fi, fp, fc = idx[free], pos[free], cur[free]
            was_empty = kk[free] == _EMPTY
            # several ids may claim one free position: a ticket (the batch row) picks the winner
            keys[fp] = fc
            vals[fp] = fi
            won = vals[fp] == fi
            vals[fp[won]] = slots[fi[won]]
            self._used += int(np.count_nonzero(was_empty & won))
            self.n += int(np.count_nonzero(won))
            lost = ~won
            idx = np.concatenate([idx[~free], fi[lost]])
            cur = np.concatenate([cur[~free], fc[lost]])
            pos = np.concatenate([pos[~free], fp[lost]])
            if np.any(keys[pos] == cur):  # an equal id already sits where this one probes
                return False
            pos = (pos + 1) & mask
        return True

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids known to be present."""
        p = self.find(ids)
        assert (p >= 0).all(), "IdIndex.delete of absent ids"
        self.keys[p] = _TOMB
        self.n -= ids.shape[0]

    def set(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Change the slots of ids known to be present."""
        p = self.find(ids)
        assert (p >= 0).all(), "IdIndex.set of absent ids"
        self.vals[p] = slots

    def _rehash(self, m: int) -> None:
        live = self.keys >= 0
        ids, slots = self.keys[live], self.vals[live]
        self._alloc(self._cap_for(max(m, ids.shape[0])))
        ok = self.insert(ids, slots)
        assert ok, "IdIndex rehash found duplicated ids"

    @classmethod
    def build(cls, ids: np.ndarray) -> "IdIndex | None":
        """Index ``ids[i] -> i``; None when ``ids`` holds duplicates."""
        t = cls(ids.shape[0])
        return t if t.insert(ids, np.arange(ids.shape[0], dtype=np.int64)) else None


@dataclass
class _Incoming:
    """Validated incoming Gaussians, on the map device, float32, SH at the map degree."""

    params: dict[str, torch.Tensor]
    ids: torch.Tensor
    ids_np: np.ndarray
    extras: dict[str, torch.Tensor]

    def subset(self, rows: np.ndarray) -> "_Incoming":
        r = torch.from_numpy(rows).to(self.ids.device)
        return _Incoming({k: v.index_select(0, r) for k, v in self.params.items()}, self.ids.index_select(0, r),
                         self.ids_np[rows], {k: v.index_select(0, r) for k, v in self.extras.items()})


def _few(xs, k: int = 10) -> str:
    xs = xs.tolist() if isinstance(xs, np.ndarray) else list(xs)
    return str(xs[:k]) + (f" (and {len(xs) - k} more)" if len(xs) > k else "")


def _dups(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values occurring more than once (sort-based: np.unique is slower)."""
    s = np.sort(ids)
    d = s[1:][s[1:] == s[:-1]]
    return d[np.concatenate([[True], d[1:] != d[:-1]])] if d.size else d


def _nonfinite(t: torch.Tensor) -> int:
    """Number of non-finite values (numpy on CPU: torch.isfinite is much slower there)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        a = t.detach().numpy()
        return 0 if np.isfinite(a).all() else int((~np.isfinite(a)).sum())
    return int((~torch.isfinite(t)).sum())


_BLOCK_BITS = 21
_BLOCK_OFF = 1 << (_BLOCK_BITS - 1)


def _unique_blocks(b: torch.Tensor) -> torch.Tensor:
    """Sorted unique rows of [m, 3] int64 block coordinates. Packs each row into one int64 key
    (21 bits per axis) when every coordinate fits, since a 1-D unique is far faster than
    ``torch.unique(dim=0)``; same result (lexicographic order) either way. numpy on CPU: its
    reductions and sort are several times faster than torch's there."""
    if b.shape[0] == 0:
        return b
    if b.device.type != "cpu":
        return torch.unique(b, dim=0)
    a = b.numpy()
    if a.min() < -_BLOCK_OFF or a.max() >= _BLOCK_OFF:
        return torch.unique(b, dim=0)
    u = a + _BLOCK_OFF
    key = np.sort((u[:, 0] << (2 * _BLOCK_BITS)) | (u[:, 1] << _BLOCK_BITS) | u[:, 2])
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # np.unique is slower here (numpy 2.x)
    m = (1 << _BLOCK_BITS) - 1
    out = np.stack([key >> (2 * _BLOCK_BITS), (key >> _BLOCK_BITS) & m, key & m], axis=1) - _BLOCK_OFF
    return torch.from_numpy(out)


def _validate_config(cfg: MapConfig) -> None:
    if not isinstance(cfg, MapConfig):
        raise InvalidInputError(f"config must be a MapConfig, got {type(cfg).__name__}")
    if not isinstance(cfg.capacity, int) or cfg.capacity < 0:
        raise InvalidInputError(f"MapConfig.capacity must be an int >= 0, got {cfg.capacity!r}")
    if cfg.sh_degree not in (0, 1, 2, 3):
        raise InvalidInputError(f"MapConfig.sh_degree must be 0..3, got {cfg.sh_degree!r}")
    if not (isinstance(cfg.block_size, (int, float)) and np.isfinite(cfg.block_size) and cfg.block_size > 0):
        raise InvalidInputError(f"MapConfig.block_size must be a finite number > 0, got {cfg.block_size!r}")
    lim = cfg.max_abs_coordinate
    if not (isinstance(lim, (int, float)) and np.isfinite(lim) and lim > 0):
        raise InvalidInputError(f"MapConfig.max_abs_coordinate must be a finite number > 0, got {lim!r}")
    lo, hi = cfg.min_scale, cfg.max_scale
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and np.isfinite(lo)
            and np.isfinite(hi) and 0 <= lo < hi):
        raise InvalidInputError(f"MapConfig scale range must satisfy 0 <= min_scale < max_scale (finite), "
                                f"got [{lo!r}, {hi!r}]")
    if not isinstance(cfg.initial_capacity, int) or cfg.initial_capacity < 0:
        raise InvalidInputError(f"MapConfig.initial_capacity must be an int >= 0, got {cfg.initial_capacity!r}")
    try:
        torch.empty(0, device=cfg.device)
    except (RuntimeError, ValueError) as e:
        raise InvalidInputError(f"MapConfig.device {cfg.device!r} is not usable: {e}") from e


_MAX_VERSION = (1 << 63) - 1
"""Largest map version a save may carry (ROS messages carry it as uint64; Python ints do not wrap)."""


def _check_saved_meta(raw: str, path: str) -> dict:
    """Parse and type-check the ``chorus_map`` metadata of a saved map (CheckpointError naming
    the bad field: a crafted or damaged file must not raise anything else)."""
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{path!r}: 'chorus_map' metadata is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path!r}: 'chorus_map' metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
        raise CheckpointError(f"{path!r}: unsupported map format {meta.get('format')!r} "
                              f"v{meta.get('format_version')!r} (expected {_FORMAT} v{_FORMAT_VERSION})")
    missing = [k for k in ("version", "n", "config", "attributes") if k not in meta]
    if missing:
        raise CheckpointError(f"{path!r}: map metadata lacks {missing}")
    for k, hi in (("version", _MAX_VERSION), ("n", _MAX_VERSION)):
        v = meta[k]
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi):
            raise CheckpointError(f"{path!r}: map metadata {k!r} must be an integer in [0, {hi}], got {v!r}")
    attrs = meta["attributes"]
    if not (isinstance(attrs, list) and all(isinstance(a, str) and a for a in attrs)
            and len(set(attrs)) == len(attrs)):
        raise CheckpointError(f"{path!r}: map metadata 'attributes' must be a list of distinct names, got {attrs!r}")
    return meta


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
        self._index = IdIndex()
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

    def _ids_arg(self, ids: torch.Tensor, what: str) -> np.ndarray:
        """Validated ids as a CPU int64 numpy array."""
        if not isinstance(ids, torch.Tensor):
            raise InvalidInputError(f"{what} must be a torch.Tensor of ids, got {type(ids).__name__}")
        if ids.ndim != 1:
            raise InvalidInputError(f"{what} must be 1-D, got shape {tuple(ids.shape)}")
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise InvalidInputError(f"{what} must have an integer dtype, got {ids.dtype}")
        a = ids.detach().to("cpu", torch.int64).numpy()
        if a.size and (a.min() < 0 or a.max() > _UINT32_MAX):
            bad = a[(a < 0) | (a > _UINT32_MAX)]
            raise InvalidInputError(f"{what} must be uint32 values in [0, 2^32-1]; bad: {_few(bad)}")
        return a

    def _check_unique(self, ids: np.ndarray, what: str) -> None:
        if ids.size > 1 and _dups(ids).size:
            raise InvalidInputError(f"{what}: duplicated ids within one call: {_few(_dups(ids))}")

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        return self._index.lookup(ids)

    def slots_of(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] int64 slots of ``ids``; raises UnknownIdError naming (up to 10) unknown ids."""
        a = self._ids_arg(ids, "ids")
        slots = self._slots(a)
        if (slots < 0).any():
            unknown = a[slots < 0]
            raise UnknownIdError(f"{unknown.size} ids not in the map: {_few(unknown)}")
        return torch.from_numpy(slots).to(self._device)

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """[k] bool."""
        return torch.from_numpy(self._slots(self._ids_arg(ids, "ids")) >= 0).to(self._device)

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
        ids_np = self._ids_arg(ids, f"{what} ids")
        if check_dups:
            self._check_unique(ids_np, what)
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
        self._check_limits(params, ids, what)
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
        return _Incoming(params, ids.to(self._device, torch.int64), ids_np, extras)

    def _check_limits(self, params: dict[str, torch.Tensor], ids: torch.Tensor, what: str) -> None:
        """Refuse means outside ``max_abs_coordinate`` and scales outside [min_scale, max_scale]
        (InvalidInputError naming the first offending ids and values)."""
        cfg = self.config
        lim = float(cfg.max_abs_coordinate)
        far = params["means"].abs().amax(1) > lim if len(ids) else torch.zeros(0, dtype=torch.bool)
        ls = params["log_scales"]
        lo = float(np.log(cfg.min_scale)) if cfg.min_scale > 0 else -float("inf")
        hi = float(np.log(cfg.max_scale))
        off = ((ls < lo) | (ls > hi)).any(1) if len(ids) else far
        for mask, text in ((far, f"means outside +-{lim:g} m (MapConfig.max_abs_coordinate)"),
                           (off, f"scales outside [{cfg.min_scale:g}, {cfg.max_scale:g}] m "
                                 f"(MapConfig.min_scale/max_scale)")):
            if bool(mask.any()):
                rows = mask.nonzero().squeeze(1)[:5].cpu()
                ex = {int(ids[r]): ([round(float(v), 3) for v in params["means"][r]] if mask is far
                                    else [float(f"{np.exp(float(v)):.3g}") for v in ls[r]]) for r in rows}
                raise InvalidInputError(f"{what}: {int(mask.sum())} Gaussians with {text}; first ids and "
                                        f"values: {ex}; nothing was changed")

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
            u = _unique_blocks(torch.cat(self._dirty))
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
                blocks = _unique_blocks(torch.cat(self._dirty))
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
        """Write ``inc`` at ``slots`` (an int64 index tensor or a slice); ``fresh`` rows get zeros
        in attributes they do not carry. index_copy_ is ~3x faster than ``t[idx] = v`` here."""
        s = self._store
        if isinstance(slots, slice):
            for name in _PARAMS:
                s[name][slots] = inc.params[name]
            s["ids"][slots] = inc.ids
            for name, v in inc.extras.items():
                self._ensure_attr(name, v)[slots] = v
            if fresh:
                for name, t in self._attrs.items():
                    if name not in inc.extras:
                        t[slots] = 0
            return
        for name in _PARAMS:
            s[name].index_copy_(0, slots, inc.params[name])
        s["ids"].index_copy_(0, slots, inc.ids)
        for name, v in inc.extras.items():
            self._ensure_attr(name, v).index_copy_(0, slots, v)
        if fresh:
            for name, t in self._attrs.items():
                if name not in inc.extras:
                    t.index_fill_(0, slots, 0)

    def _add(self, inc: _Incoming) -> None:
        n, k = self._n, inc.ids_np.shape[0]
        if k == 0:
            for name, v in inc.extras.items():  # an empty batch still declares its attributes
                self._ensure_attr(name, v)
            return
        self._reserve(n + k)
        self._write(slice(n, n + k), inc, fresh=True)
        ok = self._index.insert(inc.ids_np, np.arange(n, n + k, dtype=np.int64))
        assert ok, "ids were checked unique and absent"
        self._n = n + k
        self._mark(inc.params["means"])

    def _update(self, inc: _Incoming, slots: np.ndarray) -> None:
        if slots.size == 0:
            for name, v in inc.extras.items():
                self._ensure_attr(name, v)
            return
        st = torch.from_numpy(slots).to(self._device)
        self._mark(self._store["means"].index_select(0, st))
        self._write(st, inc, fresh=False)
        self._mark(inc.params["means"])

    def _remove(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Swap-remove: surviving Gaussians of the tail [n-k, n) fill the holes below n-k."""
        k = slots.shape[0]
        if k == 0:
            return
        n = self._n
        n_new = n - k
        dev = self._device
        self._mark(self._store["means"].index_select(0, torch.from_numpy(slots).to(dev)))
        in_tail = slots >= n_new
        keep_tail = np.ones(k, dtype=bool)
        keep_tail[slots[in_tail] - n_new] = False
        movers = np.arange(n_new, n, dtype=np.int64)[keep_tail]
        holes = slots[~in_tail]
        assert movers.shape[0] == holes.shape[0], "swap-remove pairing broken"
        self._index.delete(ids)
        if holes.shape[0]:
            mv, ho = torch.from_numpy(movers).to(dev), torch.from_numpy(holes).to(dev)
            for t in list(self._store.values()) + list(self._attrs.values()):
                t.index_copy_(0, ho, t.index_select(0, mv))
            self._index.set(self._store["ids"].index_select(0, ho).cpu().numpy(), holes)
        self._n = n_new

    def _removal(self, removed_ids: torch.Tensor, missing: str, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Validated (ids, slots) to remove; unknown ids raise or are skipped per ``missing``."""
        a = self._ids_arg(removed_ids, what)
        self._check_unique(a, what)
        slots = self._slots(a)
        bad = slots < 0
        if bad.any():
            if missing == "error":
                raise UnknownIdError(f"{what}: {int(bad.sum())} ids not in the map: {_few(a[bad])}")
            a, slots = a[~bad], slots[~bad]
        return a, slots

    def check(self, g: GaussianArrays, what: str = "update", *, snapshot: bool = False) -> None:
        """Validate ``g`` exactly as :meth:`apply_delta` (``snapshot``: :meth:`replace_all`) would:
        ids present and unique, finite values, coordinate and scale limits, extras matching the
        map's attributes (not for a snapshot), without changing anything; raises
        InvalidInputError naming ``what``. Capacity is not checked."""
        with self._lock:
            if snapshot:
                inc = self._prepare(g, what, check_dups=False, default_ids=True, match_attrs=False)
                if IdIndex.build(inc.ids_np) is None:
                    raise InvalidInputError(f"{what}: duplicated ids within one call: {_few(_dups(inc.ids_np))}")
            else:
                self._prepare(g, what)

    # ------------------------------------------------------------------ mutation
    def add(self, g: GaussianArrays) -> None:
        """Insert Gaussians with new unique ids (ids required)."""
        with self._lock:
            inc = self._prepare(g, "add")
            present = inc.ids_np[self._slots(inc.ids_np) >= 0]
            if present.size:
                raise InvalidInputError(f"add: {present.size} ids are already in the map (use update or "
                                        f"apply_delta to overwrite): {_few(present)}")
            k = inc.ids_np.shape[0]
            self._check_capacity(self._n + k, f"add of {k} Gaussians")
            self._add(inc)
            self._version += 1

    def update(self, g: GaussianArrays) -> None:
        """Overwrite parameters (and given extras) of existing ids."""
        with self._lock:
            inc = self._prepare(g, "update")
            slots = self._slots(inc.ids_np)
            if (slots < 0).any():
                unknown = inc.ids_np[slots < 0]
                raise UnknownIdError(f"update: {unknown.size} ids not in the map: {_few(unknown)}")
            self._update(inc, slots)
            self._version += 1

    def remove(self, ids: torch.Tensor, *, missing: str = "error") -> int:
        """Remove ids; ``missing='error'`` raises UnknownIdError, 'ignore' skips unknown ones.
        Returns the number removed."""
        with self._lock:
            self._check_missing_arg(missing)
            a, slots = self._removal(ids, missing, "remove")
            self._remove(a, slots)
            self._version += 1
            return int(a.shape[0])

    def apply_delta(self, upserts: GaussianArrays | None, removed_ids: torch.Tensor | None, *,
                    missing: str = "error") -> DeltaResult:
        """Atomic: remove ``removed_ids`` then upsert (add new / update existing) ``upserts``.

        An id both removed and upserted is re-added as a new Gaussian (attributes reset to zero).
        ``missing`` applies to ``removed_ids`` as in :meth:`remove`."""
        with self._lock:
            self._check_missing_arg(missing)
            empty = np.zeros(0, dtype=np.int64)
            rm_ids, rm_slots = (empty, empty) if removed_ids is None else self._removal(
                removed_ids, missing, "apply_delta removed_ids")
            inc = None if upserts is None else self._prepare(upserts, "apply_delta upserts")
            is_new = np.zeros(0, dtype=bool)
            if inc is not None:
                is_new = self._slots(inc.ids_np) < 0
                if rm_ids.size:
                    is_new |= np.isin(inc.ids_np, rm_ids)
            n_new, n_rm = int(is_new.sum()), int(rm_ids.shape[0])
            self._check_capacity(self._n - n_rm + n_new, f"apply_delta (+{n_new} new, -{n_rm} removed)")
            # --- all checks passed: mutate
            self._remove(rm_ids, rm_slots)
            n_upd = 0
            if inc is not None:
                if n_new == is_new.shape[0]:
                    self._add(inc)
                else:
                    upd = inc.subset(np.flatnonzero(~is_new))
                    self._update(upd, self._slots(upd.ids_np))  # slots after the swap-removes
                    if n_new:
                        self._add(inc.subset(np.flatnonzero(is_new)))
                    n_upd = int(upd.ids_np.shape[0])
            self._version += 1
            return DeltaResult(added=n_new, updated=n_upd, removed=n_rm, version=self._version)

    def replace_all(self, g: GaussianArrays) -> None:
        """Full snapshot: the map becomes exactly ``g`` (marks the whole map dirty).

        Attributes become exactly ``g.extras``. ``g.ids = None`` means ids ``0..N-1``."""
        with self._lock:
            inc = self._prepare(g, "replace_all", check_dups=False, default_ids=True, match_attrs=False)
            n = inc.ids_np.shape[0]
            self._check_capacity(n, f"replace_all with {n} Gaussians")
            index = IdIndex.build(inc.ids_np)
            if index is None:
                raise InvalidInputError(f"replace_all: duplicated ids within one call: {_few(_dups(inc.ids_np))}")
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
            self._store, self._attrs, self._index, self._n = store, attrs, index, n
            self._version += 1
            self._mark_full()

    def clear(self) -> None:
        """Remove every Gaussian (attribute names are kept); marks the whole map dirty."""
        with self._lock:
            self._n = 0
            self._index = IdIndex()
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
            sl = slots.detach().to("cpu", torch.int64).numpy()
            if sl.shape[0] != values.shape[0]:
                raise InvalidInputError(f"attribute {name!r}: {values.shape[0]} value rows for {sl.shape[0]} slots")
            if sl.size and (sl.min() < 0 or sl.max() >= self._n):
                raise InvalidInputError(f"attribute {name!r}: slots must be in [0, {self._n}), got range "
                                        f"[{sl.min()}, {sl.max()}]")
            if _dups(sl).size:
                raise InvalidInputError(f"attribute {name!r}: duplicated slots {_few(_dups(sl))}")
            cur = self._attrs.get(name)
            if cur is not None:
                if tuple(values.shape[1:]) != tuple(cur.shape[1:]):
                    raise InvalidInputError(f"attribute {name!r}: per-Gaussian shape {tuple(values.shape[1:])} "
                                            f"differs from the stored {tuple(cur.shape[1:])}")
                if not torch.can_cast(values.dtype, cur.dtype):
                    raise InvalidInputError(f"attribute {name!r}: dtype {values.dtype} cannot be cast to the "
                                            f"stored {cur.dtype}")
            t = self._ensure_attr(name, values)
            t.index_copy_(0, torch.from_numpy(sl).to(self._device), values.detach().to(self._device, t.dtype))

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
    def saved_nbytes(self) -> int:
        """Bytes of tensor data :meth:`save` writes for the current Gaussians and attributes
        (the file adds a small header; used to check disk space before saving)."""
        with self._lock:
            n = self._n
            return int(sum(v[:n].numel() * v.element_size()
                           for v in list(self._store.values()) + list(self._attrs.values())))

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
        meta = _check_saved_meta(raw_meta, str(path))
        expected = set(_PARAMS) | {"ids"} | {_ATTR_PREFIX + a for a in meta["attributes"]}
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{str(path)!r}: missing tensors {missing}, unexpected tensors {unexpected}")
        if config is None:
            known = {f.name for f in fields(MapConfig)}
            saved = meta["config"]
            if not isinstance(saved, dict):
                raise CheckpointError(f"{str(path)!r}: saved config must be a mapping, got {type(saved).__name__}")
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
