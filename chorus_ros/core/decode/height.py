"""Height above the floor as a class cue: a per-class height prior for semantic decoding.

Indoors, where a surface is above the floor says much about what it is: floors at 0, table tops
near 0.7 m, ceilings above 2.2 m (the 'height above ground' channel of HHA-style indoor
segmentation). The encoder never sees it: its inputs are local and translation invariant by
design (chorus_ros.core.encoder.features), so a floor patch and a ceiling patch of the same look
are told apart only by what stands near them. This module adds the cue at decoding time, where
a global statistic costs nothing to incremental encoding:

* :func:`estimate_floor`: the floor height of a gravity-aligned map (z up, REP-103), the lowest
  horizontal layer that holds a clear share of the map's opacity mass (floaters below the floor
  carry too little to count);
* :class:`HeightPrior`: per class, the log-likelihood ratio ``log p(h | c) - log p(h)`` of the
  height ``h`` above the floor in bins, counted over labelled training maps (:func:`fit_height_prior`);
* :meth:`HeightPrior.log_ratio`: the ``[N, K]`` term added to the semantic logits (scaled by
  ``SemanticConfig.height_prior_weight``). Classes the prior does not know, and heights outside
  its bins (below the floor by more than the first bin, an upper storey), get 0: no evidence,
  so the language head alone decides, as without a prior.

The prior is stored beside a checkpoint (:data:`HEIGHT_PRIOR_FILE`) and made by
``chorus-height-prior`` (chorus_ros/tools/height_prior.py) from the rooms the checkpoint was
trained on. Measured in docs/generalisation.md ("Height above the floor").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError

__all__ = ["HEIGHT_PRIOR_FILE", "HeightPrior", "estimate_floor", "fit_height_prior", "FloorEstimate"]

HEIGHT_PRIOR_FILE = "height_prior.json"
"""File name of a checkpoint's height prior."""

_FORMAT = "chorus_ros.height_prior/1"


@dataclass(frozen=True)
class FloorEstimate:
    """Result of :func:`estimate_floor`."""

    z: float
    """Floor height in the map frame, metres (the weighted mean height of the floor layers)."""
    fraction: float
    """Share of the opacity mass in the two layers at the floor."""


def estimate_floor(z: np.ndarray | torch.Tensor, weights: np.ndarray | torch.Tensor | None = None, *,
                   layer_m: float = 0.05, min_fraction: float = 0.02) -> FloorEstimate | None:
    """Floor height of a gravity-aligned map (z up).

    ``z [N]``: Gaussian centre heights, metres; ``weights [N]``: their opacities (None: 1). The
    heights are binned in layers of ``layer_m``; the floor is the weighted mean height of the
    lowest pair of adjacent layers that holds at least ``min_fraction`` of the total weight. A few
    floaters below the floor hold less than that and are passed over. Returns None for an
    empty map or one without positive weight.
    """
    z = np.asarray(z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else z, dtype=np.float64).reshape(-1)
    w = (np.ones_like(z) if weights is None else
         np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights,
                    dtype=np.float64).reshape(-1))
    if w.shape != z.shape:
        raise InvalidInputError(f"estimate_floor: {w.shape[0]} weights for {z.shape[0]} heights")
    if not layer_m > 0 or not 0 < min_fraction <= 1:
        raise InvalidInputError(f"estimate_floor: layer_m must be > 0 and min_fraction in (0, 1], got "
                                f"{layer_m}, {min_fraction}")
    ok = np.isfinite(z) & np.isfinite(w) & (w > 0)
    z, w = z[ok], w[ok]
    if z.size == 0:
        return None
    lo = math.floor(float(z.min()) / layer_m)
    idx = np.floor(z / layer_m).astype(np.int64) - lo
    hist = np.bincount(idx, weights=w)
    total = float(hist.sum())
    pair = hist + np.append(hist[1:], 0.0)
    hit = np.flatnonzero(pair >= min_fraction * total)
    i = int(hit[0]) if hit.size else int(np.argmax(pair))
    sel = (idx == i) | (idx == i + 1)
    return FloorEstimate(float(np.average(z[sel], weights=w[sel])), float(pair[i] / total))


@dataclass
class HeightPrior:
    """Per-class log-likelihood ratios of the height above the floor (see the module docstring)."""

    edges: np.ndarray
    """[B + 1] ascending bin edges, metres above the floor."""
    names: list[str]
    """Class names the rows belong to."""
    llr: np.ndarray
    """[C, B] float ``log p(h in bin | class) - log p(h in bin)``."""
    provenance: dict = field(default_factory=dict)
    """Where the counts came from (sources, seeds, smoothing), saved with the prior."""

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.llr = np.asarray(self.llr, dtype=np.float64)
        self.names = [str(n) for n in self.names]
        if self.edges.ndim != 1 or self.edges.size < 2 or not bool(np.all(np.diff(self.edges) > 0)):
            raise InvalidInputError("height prior: edges must be at least two ascending values")
        if self.llr.shape != (len(self.names), self.edges.size - 1):
            raise InvalidInputError(f"height prior: llr is {self.llr.shape}, expected "
                                    f"({len(self.names)}, {self.edges.size - 1}) (classes, bins)")
        if not bool(np.isfinite(self.llr).all()):
            raise InvalidInputError("height prior: llr has non-finite values")

    @property
    def bins(self) -> int:
        return self.edges.size - 1

    def table(self, names: Sequence[str]) -> torch.Tensor:
        """``[K, B]`` float32 rows for the label set ``names`` (zeros for names the prior lacks)."""
        out = torch.zeros(len(names), self.bins)
        row = {n: i for i, n in enumerate(self.names)}
        for k, n in enumerate(names):
            if n in row:
                out[k] = torch.from_numpy(self.llr[row[n]]).float()
        return out

    def bin_index(self, heights: torch.Tensor) -> torch.Tensor:
        """``[N]`` int64 bin of each height above the floor; -1 outside ``[edges[0], edges[-1])``."""
        e = torch.as_tensor(self.edges, dtype=torch.float64, device=heights.device)
        h = heights.double()
        b = torch.bucketize(h, e, right=True) - 1
        return torch.where((h >= e[0]) & (h < e[-1]), b, torch.full_like(b, -1))

    @staticmethod
    def log_ratio_from_table(table: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` term for bin indices ``bins [N]`` (-1: zeros) from a :meth:`table`."""
        t = torch.cat([table, table.new_zeros(table.shape[0], 1)], 1).to(bins.device)  # last column: outside
        return t[:, torch.where(bins < 0, torch.full_like(bins, t.shape[1] - 1), bins)].T.contiguous()

    def log_ratio(self, heights: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """``[N, K]`` log-likelihood ratios of heights above the floor ``heights [N]`` (metres)
        for the classes ``names``."""
        return self.log_ratio_from_table(self.table(names), self.bin_index(heights))

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write JSON (a directory gets :data:`HEIGHT_PRIOR_FILE` inside it)."""
        p = Path(path)
        if p.is_dir():
            p = p / HEIGHT_PRIOR_FILE
        doc = {"format": _FORMAT, "edges_m": [round(float(e), 6) for e in self.edges], "names": self.names,
               "llr": [[round(float(v), 5) for v in row] for row in self.llr], "provenance": self.provenance}
        p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> "HeightPrior":
        """Read :meth:`save`'s JSON (a directory: its :data:`HEIGHT_PRIOR_FILE`); errors name the file."""
        p = Path(path)
        if p.is_dir():
            p = p / HEIGHT_PRIOR_FILE
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"height prior {p}: cannot read it ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise InvalidInputError(f"height prior {p}: not a {_FORMAT} file")
        try:
            return cls(np.asarray(doc["edges_m"]), list(doc["names"]), np.asarray(doc["llr"]),
                       dict(doc.get("provenance", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"height prior {p}: {e}") from e


def fit_height_prior(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]], names: Sequence[str], *,
                     edges: Sequence[float] | None = None, pseudo_maps: float = 1.0, blur_m: float = 0.15,
                     provenance: dict | None = None) -> HeightPrior:
    """Count heights above the floor per class over labelled maps.

    ``samples``: per map ``(z [N] metres, labels [N] int class ids into names (others ignored),
    weights [N] or None)``; each map's floor comes from :func:`estimate_floor` over all of its
    Gaussians, as at decoding time. ``edges`` default: 10 cm bins from -0.5 m to 4 m.

    Every map counts once per class it contains (its height histogram of that class, normalised:
    the Gaussians of one room are not independent samples, and a densely sampled room must not
    outweigh the others). ``p(h | c)`` is smoothed towards the marginal ``p(h)`` (the mean of the
    classes' histograms) with ``pseudo_maps`` maps' weight, so a height no map of a class reached
    costs ``log(pseudo_maps / (maps with c + pseudo_maps))`` (-3.9 with 48 maps) rather than minus
    infinity. Bins the maps did not reach (under 0.1 % of the fullest bin's share before the
    blur), and classes no map contains, get 0 (no evidence).
    ``blur_m``: each map's histograms are smoothed along the height by a Gaussian of this
    standard deviation first, so the prior does not hold other rooms to the exact heights of
    the training rooms (ceilings, sills and table tops vary from building to building); 0: off.
    """
    e = np.arange(-0.5, 4.0001, 0.1) if edges is None else np.asarray(edges, dtype=np.float64)
    if not pseudo_maps > 0:
        raise InvalidInputError(f"fit_height_prior: pseudo_maps must be > 0, got {pseudo_maps}")
    if not blur_m >= 0:
        raise InvalidInputError(f"fit_height_prior: blur_m must be >= 0, got {blur_m}")
    k, nb = len(names), e.size - 1
    centres = 0.5 * (e[1:] + e[:-1])
    blur = None
    if blur_m > 0:   # [nb, nb] column-normalised Gaussian kernel over the bin centres
        blur = np.exp(-0.5 * ((centres[:, None] - centres[None]) / blur_m) ** 2)
        blur /= blur.sum(0, keepdims=True)
    counts = np.zeros((k, nb))
    raw = np.zeros(nb)                                # unblurred mass per bin: where the maps reached
    maps = 0
    for z, lab, w in samples:
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        lab = np.asarray(lab).reshape(-1).astype(np.int64)
        if lab.shape != z.shape:
            raise InvalidInputError(f"fit_height_prior: {lab.shape[0]} labels for {z.shape[0]} heights")
        fl = estimate_floor(z, w)
        if fl is None:
            continue
        b = np.searchsorted(e, z - fl.z, side="right") - 1
        ok = (lab >= 0) & (lab < k) & (b >= 0) & (b < nb)
        wt = np.ones_like(z) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
        one = np.zeros((k, nb))
        np.add.at(one, (lab[ok], b[ok]), wt[ok])
        raw += one.sum(0) / max(float(one.sum()), 1e-12)
        if blur is not None:
            one = one @ blur.T
        tot = one.sum(1, keepdims=True)
        counts += np.divide(one, tot, out=np.zeros_like(one), where=tot > 0)
        maps += 1
    if maps == 0:
        raise InvalidInputError("fit_height_prior: no map with a floor")
    n_c = counts.sum(1)                              # maps containing each class
    seen = n_c > 0
    marg = (counts[seen] / n_c[seen, None]).mean(0)  # p(h): the mean of the seen classes' histograms
    reached = (marg > 0) & (raw > 1e-3 * raw.max())
    p_h = np.where(reached, marg, 1.0)
    p_hc = (counts + pseudo_maps * p_h[None]) / (n_c[:, None] + pseudo_maps)
    llr = np.log(p_hc) - np.log(p_h)[None]
    llr[:, ~reached] = 0.0                           # a height no class reached: no evidence
    llr[~seen] = 0.0                                 # a class no map contains: no evidence
    prov = dict(provenance or {})
    prov.update(maps=maps, pseudo_maps=float(pseudo_maps), blur_m=float(blur_m),
                maps_per_class={n: round(float(c), 3) for n, c in zip(names, n_c)})
    return HeightPrior(e, list(names), llr, prov)
