"""Read and write 3D Gaussian Splatting PLY files (the reference Inria layout).

Layout written (one ``vertex`` element, every property a scalar)::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3  [extras]  [id]

* ``f_rest`` is **channel-major**: all K-1 higher-order coefficients of R, then of G, then of B,
  so ``f_rest_{c*(K-1) + (k-1)}`` is ``sh[:, k, c]``.
* ``nx ny nz`` are written as zeros (the reference layout has them) and ignored on reading.
* Parameters are raw (pre-activation): opacity logits, log-scales, wxyz quaternions.

Reading is by property *name*, so any order works (real scenes store ``rot_*`` before
``scale_*``); the SH degree (0..3) is inferred from the number of ``f_rest_*`` properties; an
``id`` property becomes :attr:`GaussianArrays.ids` (else ``ids = arange(N)``); every other scalar
property (``label``, ``instance``, ...) becomes an entry of :attr:`GaussianArrays.extras`.
Formats: ``binary_little_endian`` (fast path: one ``np.frombuffer``), ``binary_big_endian`` and
``ascii`` (slower, for small files).

Plain coloured point clouds (``x y z`` + ``red green blue`` uchar or ``r g b`` / ``red green
blue`` float 0-1, optionally ``nx ny nz``) are read too: :func:`read_ply` detects the layout
(:func:`chorus_ros.core.plain_cloud.detect_layout`), fills in the 3DGS parameters with the
documented defaults of :class:`~chorus_ros.core.plain_cloud.PointCloudInputConfig` and says which
layout it read in :attr:`PlyReadResult.layout` / :attr:`PlyReadResult.layout_note`. The 3DGS path
is unchanged by this.

Non-finite values (real scenes contain ``opacity = +inf``, a quantised opacity of 1.0) are
handled by :func:`sanitize_gaussians`, applied by :func:`read_ply` unless ``sanitize=False``.
Policy (:class:`SanitizeConfig`):

============  ==========================  ==============================================
field         value                       action
============  ==========================  ==============================================
opacities     +inf / -inf                 clamped to +/- ``opacity_logit_limit`` (20)
log_scales    -inf                        clamped to ``log_scale_min`` (-20): a point-like
                                          Gaussian, the limit the value denotes
anything      NaN, or +-inf elsewhere     row dropped (``drop_nonfinite_rows=True``) or
              (means, quats, sh, +inf     :class:`InvalidInputError` (False)
              log_scale)
extras        non-finite                  counted in the report, left unchanged
============  ==========================  ==============================================

Example::

    from chorus_ros.core.ply import read_ply, write_ply
    g, report = read_ply("scene.ply")          # also: res = read_ply(...); res.gaussians
    print(report.summary())
    write_ply("copy.ply", g)
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.plain_cloud import (LAYOUT_3DGS, NORMAL_FIELDS, PointCloudInputConfig,
                                         colour_fields, colours_to_unit, detect_layout, points_to_gaussians)

__all__ = [
    "PlyProperty",
    "PlyHeader",
    "SanitizeConfig",
    "FieldReport",
    "SanitizeReport",
    "PlyReadResult",
    "read_ply",
    "read_ply_header",
    "write_ply",
    "write_point_cloud_ply",
    "sanitize_gaussians",
    "ply_property_names",
    "structured_to_gaussians",
    "structured_points_to_gaussians",
    "gaussians_to_structured",
    "PARAM_FIELDS",
]

# PLY scalar type name -> numpy type code (without byte order).
_PLY_TO_NP = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
# numpy type code -> canonical PLY name written by the writer.
_NP_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
              "u4": "uint", "f4": "float", "f8": "double"}

_FORMATS = ("binary_little_endian", "binary_big_endian", "ascii")
_UINT32_MAX = 2**32 - 1

PARAM_FIELDS = ("means", "sh", "opacities", "log_scales", "quats")
"""GaussianArrays fields that hold 3DGS parameters (checked by :func:`sanitize_gaussians`)."""


def ply_property_names(sh_degree: int) -> list[str]:
    """Parameter property names of the reference layout for ``sh_degree`` (without normals, id
    or extras): ``x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3``."""
    if sh_degree not in (0, 1, 2, 3):
        raise InvalidInputError(f"sh_degree must be 0..3, got {sh_degree!r}")
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


# ----------------------------------------------------------------------------- header


@dataclass
class PlyProperty:
    """One scalar property of a PLY element."""

    name: str
    ply_type: str
    """Type as spelled in the file ('float', 'uchar', ...)."""

    @property
    def np_code(self) -> str:
        return _PLY_TO_NP[self.ply_type]


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty]
    has_list: bool = False
    """True when the element has a ``property list`` (variable-size rows)."""


@dataclass
class PlyHeader:
    """Parsed PLY header."""

    format: str
    """'binary_little_endian', 'binary_big_endian' or 'ascii'."""
    elements: list[PlyElement]
    comments: list[str]
    data_offset: int
    """Byte offset of the first data byte (just after ``end_header\\n``)."""

    @property
    def vertex(self) -> PlyElement:
        for e in self.elements:
            if e.name == "vertex":
                return e
        raise InvalidInputError(f"PLY has no 'vertex' element (elements: {[e.name for e in self.elements]})")

    @property
    def property_types(self) -> dict[str, str]:
        """Vertex property name -> PLY type as in the file."""
        return {p.name: p.ply_type for p in self.vertex.properties}


def _parse_header(data: bytes, source: str) -> PlyHeader:
    if not data.startswith(b"ply"):
        raise InvalidInputError(f"{source}: not a PLY file (does not start with 'ply')")
    m = re.search(rb"end_header[ \t]*\r?\n", data[:1 << 20])
    if m is None:
        raise InvalidInputError(f"{source}: PLY header has no 'end_header' line in its first MiB")
    text = data[: m.start()].decode("ascii", errors="replace")
    fmt = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for lineno, raw in enumerate(text.splitlines()[1:], start=2):
        parts = raw.split()
        if not parts:
            continue
        key = parts[0]
        if key == "format":
            if len(parts) < 2 or parts[1] not in _FORMATS:
                raise InvalidInputError(f"{source}: unsupported PLY format line {raw!r} (known: {_FORMATS})")
            fmt = parts[1]
        elif key in ("comment", "obj_info"):
            comments.append(raw.partition(" ")[2])
        elif key == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise InvalidInputError(f"{source}: bad element line {lineno}: {raw!r}")
            elements.append(PlyElement(parts[1], int(parts[2]), []))
        elif key == "property":
            if not elements:
                raise InvalidInputError(f"{source}: property before any element on line {lineno}")
            if len(parts) >= 2 and parts[1] == "list":
                elements[-1].has_list = True
                elements[-1].properties.append(PlyProperty(parts[-1], "list"))
                continue
            if len(parts) != 3 or parts[1] not in _PLY_TO_NP:
                raise InvalidInputError(f"{source}: bad property line {lineno}: {raw!r} "
                                        f"(known types: {sorted(_PLY_TO_NP)})")
            elements[-1].properties.append(PlyProperty(parts[2], parts[1]))
        else:
            raise InvalidInputError(f"{source}: unknown PLY header line {lineno}: {raw!r}")
    if fmt is None:
        raise InvalidInputError(f"{source}: PLY header has no 'format' line")
    hdr = PlyHeader(fmt, elements, comments, m.end())
    v = hdr.vertex
    if v.has_list:
        raise InvalidInputError(f"{source}: the vertex element has a list property; 3DGS vertices are scalar")
    names = [p.name for p in v.properties]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"{source}: duplicated vertex properties {dup}")
    return hdr


def read_ply_header(path: str | Path) -> PlyHeader:
    """Parse only the header of a PLY file."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return _parse_header(head, str(path))


def _element_dtype(el: PlyElement, order: str) -> np.dtype:
    return np.dtype([(p.name, order + p.np_code) for p in el.properties])


def _read_vertex_table(data: bytes, hdr: PlyHeader, source: str) -> np.ndarray:
    """Structured array (native byte order not guaranteed) of the vertex element."""
    v = hdr.vertex
    if hdr.format == "ascii":
        return _read_vertex_ascii(data, hdr, source)
    order = "<" if hdr.format == "binary_little_endian" else ">"
    offset = hdr.data_offset
    for el in hdr.elements:
        if el is v:
            break
        if el.has_list:
            raise InvalidInputError(f"{source}: element {el.name!r} with list properties precedes 'vertex'; "
                                    "cannot locate the vertex data")
        offset += el.count * _element_dtype(el, order).itemsize
    dt = _element_dtype(v, order)
    need = offset + v.count * dt.itemsize
    if len(data) < need:
        raise InvalidInputError(f"{source}: truncated PLY: {v.count} vertices of {dt.itemsize} bytes need "
                                f"{need} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=dt, count=v.count, offset=offset)


def _read_vertex_ascii(data: bytes, hdr: PlyHeader, source: str) -> np.ndarray:
    v = hdr.vertex
    lines = data[hdr.data_offset:].splitlines()
    skip = 0
    for el in hdr.elements:
        if el is v:
            break
        skip += el.count  # one line per row in ASCII PLY, lists included
    rows = [ln for ln in lines[skip: skip + v.count]]
    if len(rows) < v.count:
        raise InvalidInputError(f"{source}: ASCII PLY has {len(rows)} vertex lines, header says {v.count}")
    p = len(v.properties)
    tokens = b" ".join(rows).split()
    if len(tokens) != v.count * p:
        raise InvalidInputError(f"{source}: ASCII PLY vertex rows hold {len(tokens)} values, expected "
                                f"{v.count} x {p}")
    try:
        vals = np.array(tokens, dtype=np.float64).reshape(v.count, p)
    except ValueError as e:   # a token that is not a number
        raise InvalidInputError(f"{source}: ASCII PLY vertex rows hold a value that is not a number ({e})") from e
    out = np.empty(v.count, dtype=_element_dtype(v, "="))
    for j, prop in enumerate(v.properties):
        col = vals[:, j]
        dt = out.dtype.fields[prop.name][0]
        if dt.kind in "iu":   # integers must be read exactly: integral and in the type's range
            info = np.iinfo(dt)
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(col) | (col != np.round(col)) | (col < info.min) | (col > info.max)
            if bad.any():
                raise InvalidInputError(f"{source}: ASCII PLY property {prop.name!r} ({prop.ply_type}) holds "
                                        f"{int(bad.sum())} values that are not integers in its range, e.g. "
                                        f"{col[bad][0]!r}")
        out[prop.name] = col
    return out


# ------------------------------------------------------------------------- sanitise


@dataclass
class SanitizeConfig:
    """What :func:`sanitize_gaussians` does with non-finite values (see the module docstring)."""

    opacity_logit_limit: float = 20.0
    """+inf / -inf opacity logits become +/- this (sigmoid(20) = 1 - 2e-9)."""
    log_scale_min: float = -20.0
    """-inf log-scales (zero extent) become this (exp(-20) = 2e-9 m)."""
    drop_nonfinite_rows: bool = True
    """Drop rows with any other non-finite parameter; if False raise InvalidInputError instead."""


@dataclass
class FieldReport:
    """Non-finite values found in one field (counted per value, not per row)."""

    pos_inf: int = 0
    neg_inf: int = 0
    nan: int = 0
    action: str = "none"
    """What was done, in words."""

    @property
    def nonfinite(self) -> int:
        return self.pos_inf + self.neg_inf + self.nan


@dataclass
class SanitizeReport:
    """Per-field account of non-finite values and what was done with them."""

    n_in: int
    """Rows before sanitising."""
    n_out: int
    """Rows after sanitising (``n_in - dropped_rows``)."""
    fields: dict[str, FieldReport] = field(default_factory=dict)
    """Field name (``means``, ``sh``, ``opacities``, ``log_scales``, ``quats`` or an extras name)
    -> counts; only fields with at least one non-finite value appear."""
    dropped_rows: int = 0
    sanitized: bool = True
    """False when the values were returned raw (``sanitize=False``)."""

    @property
    def clean(self) -> bool:
        """True when no non-finite value was found."""
        return not self.fields

    def nonfinite(self, name: str) -> int:
        """Number of non-finite values found in field ``name`` (0 if none)."""
        f = self.fields.get(name)
        return 0 if f is None else f.nonfinite

    def summary(self) -> str:
        if self.clean:
            return f"{self.n_in} Gaussians, all values finite"
        parts = [f"{k}: {v.nonfinite} non-finite (+inf {v.pos_inf}, -inf {v.neg_inf}, nan {v.nan}) -> {v.action}"
                 for k, v in self.fields.items()]
        return (f"{self.n_in} Gaussians in, {self.n_out} out, {self.dropped_rows} rows dropped; "
                + "; ".join(parts))


def _count(t: torch.Tensor) -> tuple[int, int, int]:
    """(+inf, -inf, nan) counts of a tensor. numpy is used on CPU: torch's isfinite is ~20x slower."""
    if not t.is_floating_point():
        return 0, 0, 0
    a = t.detach()
    if a.device.type != "cpu":
        return int(torch.isposinf(a).sum()), int(torch.isneginf(a).sum()), int(torch.isnan(a).sum())
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()
    x = a.numpy()
    if np.isfinite(x).all():
        return 0, 0, 0
    return int(np.isposinf(x).sum()), int(np.isneginf(x).sum()), int(np.isnan(x).sum())


def _finite_rows(g: GaussianArrays) -> torch.Tensor:
    """[N] bool, all parameters finite (numpy on CPU, like :meth:`GaussianArrays.finite_mask`)."""
    if g.device.type != "cpu":
        return g.finite_mask()
    n = len(g)
    m = np.ones(n, dtype=bool)
    for t in (g.means, g.sh, g.opacities, g.log_scales, g.quats):
        a = t.detach().float().numpy().reshape(n, -1)
        m &= np.isfinite(a).all(axis=1)
    return torch.from_numpy(m)


def sanitize_gaussians(g: GaussianArrays, config: SanitizeConfig | None = None, *,
                       apply: bool = True) -> tuple[GaussianArrays, SanitizeReport]:
    """Make every parameter of ``g`` finite, following ``config`` (module docstring policy).

    Args:
        g: Gaussians (not modified; a copy is returned when anything changes).
        config: the policy; defaults to :class:`SanitizeConfig()`.
        apply: if False only count (report ``sanitized=False``) and return ``g`` unchanged.

    Returns:
        ``(gaussians, report)``.

    Raises:
        InvalidInputError: rows would need dropping and ``config.drop_nonfinite_rows`` is False.
    """
    cfg = config or SanitizeConfig()
    n = len(g)
    rep = SanitizeReport(n_in=n, n_out=n, sanitized=apply)
    tensors = {"means": g.means, "sh": g.sh, "opacities": g.opacities, "log_scales": g.log_scales,
               "quats": g.quats}
    bad_any = False
    for name, t in list(tensors.items()) + list(g.extras.items()):
        pi, ni, nan = _count(t)
        if pi or ni or nan:
            rep.fields[name] = FieldReport(pi, ni, nan, "kept (sanitize=False)" if not apply else "")
            bad_any = bad_any or name in tensors
    if not apply or not bad_any:
        for name, fr in rep.fields.items():
            if name not in tensors and apply:
                fr.action = "left unchanged (extra attribute)"
        return g, rep

    lim, smin = float(cfg.opacity_logit_limit), float(cfg.log_scale_min)
    opac = g.opacities
    if "opacities" in rep.fields:
        opac = torch.where(torch.isposinf(opac), opac.new_tensor(lim),
                           torch.where(torch.isneginf(opac), opac.new_tensor(-lim), opac))
    ls = g.log_scales
    if "log_scales" in rep.fields:
        ls = torch.where(torch.isneginf(ls), ls.new_tensor(smin), ls)
    out = GaussianArrays(g.means, g.sh, opac, ls, g.quats, g.ids, dict(g.extras))
    keep = _finite_rows(out)
    n_drop = int(n - keep.sum())
    for name, fr in rep.fields.items():
        if name not in tensors:
            fr.action = "left unchanged (extra attribute)"
            continue
        clamped = {"opacities": fr.pos_inf + fr.neg_inf, "log_scales": fr.neg_inf}.get(name, 0)
        dropped = fr.nonfinite - clamped
        acts = []
        if clamped:
            acts.append(f"{clamped} +-inf clamped to +-{lim:g}" if name == "opacities"
                        else f"{clamped} -inf clamped to {smin:g}")
        if dropped:
            acts.append(f"{dropped} nan/inf -> rows " + ("dropped" if cfg.drop_nonfinite_rows else "rejected"))
        fr.action = "; ".join(acts)
    if n_drop:
        if not cfg.drop_nonfinite_rows:
            bad = {k: v.nonfinite for k, v in rep.fields.items() if k in tensors}
            raise InvalidInputError(f"{n_drop} of {n} Gaussians have non-finite parameters that cannot be "
                                    f"clamped (per field: {bad}) and drop_nonfinite_rows is False")
        out = out.index(keep)
    rep.dropped_rows = n_drop
    rep.n_out = n - n_drop
    return out, rep


# ----------------------------------------------------------------------------- read


@dataclass
class PlyReadResult:
    """What :func:`read_ply` returns; unpacks as ``gaussians, report = read_ply(path)``."""

    gaussians: GaussianArrays
    """The Gaussians (raw 3DGS parameters, float32; ids int64; extras by name)."""
    report: SanitizeReport
    """Non-finite values found and what was done with them."""
    header: PlyHeader
    """The parsed header (format, property order and types, comments)."""
    layout: str = LAYOUT_3DGS
    """Which layout the file had: '3dgs' (reference 3DGS parameters) or 'pointcloud' (a plain
    coloured point cloud; the parameters are defaults, see :attr:`layout_note`)."""
    layout_note: str = ""
    """For 'pointcloud': one line naming the colour fields read and the defaults filled in."""

    def __iter__(self):
        yield self.gaussians
        yield self.report


_PARAM_NAMES = {"x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "id"}
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
_REST_RE = re.compile(r"f_rest_(\d+)$")


class _Columns:
    """Reads named columns of a structured array as float32 blocks.

    Fast path: when every field is 4 bytes wide at a 4-aligned offset in native byte order
    (the usual 3DGS layout), the table is viewed as a ``[N, itemsize/4]`` float32 matrix and a
    group of columns is one fancy-index gather; otherwise one strided copy per column."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        dt = table.dtype
        self.col: dict[str, int] | None = None
        native = all(dt.fields[nm][0].isnative for nm in dt.names)
        if (native and dt.itemsize % 4 == 0 and table.ndim == 1 and table.flags.c_contiguous
                and all(dt.fields[nm][0].itemsize == 4 and dt.fields[nm][1] % 4 == 0 for nm in dt.names)):
            self.col = {nm: dt.fields[nm][1] // 4 for nm in dt.names}
            self.mat = table.view(np.uint8).view(np.float32).reshape(table.shape[0], dt.itemsize // 4)

    def floats(self, names: list[str]) -> np.ndarray:
        """[N, len(names)] float32 (a new array)."""
        dt = self.table.dtype
        if self.col is not None and all(dt.fields[nm][0].kind == "f" for nm in names):
            idx = [self.col[nm] for nm in names]
            lo = idx[0]
            if idx == list(range(lo, lo + len(idx))):
                return self.mat[:, lo: lo + len(idx)].copy()
            return self.mat[:, idx]
        out = np.empty((self.table.shape[0], len(names)), dtype=np.float32)
        for j, nm in enumerate(names):
            out[:, j] = self.table[nm]  # byte swapping / float64->float32 cast happen here
        return out


def _ids_from_column(col: np.ndarray, source: str) -> torch.Tensor:
    if col.dtype.kind == "f":
        if not np.all(np.isfinite(col)) or not np.all(col == np.round(col)):
            raise InvalidInputError(f"{source}: 'id' holds non-integer values")
    ids = col.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > _UINT32_MAX):
        raise InvalidInputError(f"{source}: 'id' values must be in [0, 2^32-1], got range "
                                f"[{ids.min()}, {ids.max()}]")
    s = np.sort(ids)  # sort-based duplicate check: np.unique is several times slower here
    rep = s[1:] == s[:-1]
    if rep.any():
        d = s[1:][rep]
        raise InvalidInputError(f"{source}: {int(rep.sum())} duplicated ids, e.g. {np.unique(d)[:10].tolist()}")
    return torch.from_numpy(ids)


def _torch_np(dt: np.dtype) -> np.dtype:
    """Native numpy dtype whose torch.from_numpy gives the in-memory torch dtype (uint16 and
    uint32 widen to int32 / int64: torch's unsigned types lack most operations)."""
    code = dt.newbyteorder("=").str[1:]
    return np.dtype({"u2": "i4", "u4": "i8"}.get(code, code))


def structured_to_gaussians(table: np.ndarray, *, source: str = "array", noun: str = "properties",
                            require_id: bool = False) -> GaussianArrays:
    """Build :class:`GaussianArrays` from a structured array with 3DGS field names (shared by the
    PLY reader and the PointCloud2 conversion). Values are taken raw (no sanitising).

    Fields: ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3`` required, ``f_rest_*`` optional
    (0, 9, 24 or 45 of them: SH degree 0..3, channel-major), ``id`` optional unless
    ``require_id`` (absent: ``arange(N)``), ``nx ny nz`` ignored, any other field -> ``extras``.

    Raises:
        InvalidInputError: missing fields (listed), bad ``f_rest`` set, bad or duplicated ids.
    """
    names = list(table.dtype.names or ())
    present = set(names)
    missing = [nm for nm in _REQUIRED + (["id"] if require_id else []) if nm not in present]
    if missing:
        raise InvalidInputError(f"{source}: missing required 3DGS {noun} {missing} (has {names})")
    rest_idx = sorted(int(m.group(1)) for nm in names if (m := _REST_RE.match(nm)))
    n_rest = len(rest_idx)
    if n_rest not in (0, 9, 24, 45) or rest_idx != list(range(n_rest)):
        raise InvalidInputError(f"{source}: {n_rest} f_rest_* {noun} (indices {rest_idx[:6]}...) do not form "
                                "f_rest_0..f_rest_{3*((d+1)^2-1)-1} for an SH degree d in 0..3")
    k = n_rest // 3 + 1
    n = table.shape[0]
    cols = _Columns(table)
    means = torch.from_numpy(cols.floats(["x", "y", "z"]))
    opac = torch.from_numpy(cols.floats(["opacity"]).reshape(n))
    log_scales = torch.from_numpy(cols.floats([f"scale_{i}" for i in range(3)]))
    quats = torch.from_numpy(cols.floats([f"rot_{i}" for i in range(4)]))
    # f_rest channel-major: f_rest_{c*(K-1) + i} is sh[:, 1+i, c]
    shn = cols.floats([f"f_dc_{c}" for c in range(3)] + [f"f_rest_{i}" for i in range(n_rest)])
    sh = np.empty((n, k, 3), dtype=np.float32)
    sh[:, 0] = shn[:, :3]
    sh[:, 1:] = shn[:, 3:].reshape(n, 3, k - 1).transpose(0, 2, 1)
    ids = (_ids_from_column(table["id"], source) if "id" in present
           else torch.from_numpy(np.arange(n, dtype=np.int64)))
    extras: dict[str, torch.Tensor] = {}
    for nm in names:
        if nm in _PARAM_NAMES or _REST_RE.match(nm):
            continue
        extras[nm] = torch.from_numpy(table[nm].astype(_torch_np(table.dtype.fields[nm][0])))
    return GaussianArrays(means, torch.from_numpy(sh), opac, log_scales, quats, ids, extras)


def structured_points_to_gaussians(table: np.ndarray, config: PointCloudInputConfig | None = None, *,
                                   source: str = "array", noun: str = "properties", require_id: bool = False,
                                   colours: np.ndarray | None = None,
                                   skip: tuple[str, ...] = ()) -> tuple[GaussianArrays, str]:
    """Build :class:`GaussianArrays` from a structured array holding a plain coloured point cloud
    (shared by the PLY reader and the PointCloud2 conversion), through
    :func:`chorus_ros.core.plain_cloud.points_to_gaussians`.

    Fields: ``x y z`` required; a colour set (:data:`~chorus_ros.core.plain_cloud.COLOUR_FIELD_SETS`)
    required unless ``colours`` (``[N, 3]`` float in [0, 1], e.g. unpacked from a PointCloud2
    ``rgb`` field) is given; ``nx ny nz`` optional; ``id`` optional unless ``require_id``; the
    fields in ``skip`` are dropped; any other field -> ``extras``.

    Returns:
        ``(gaussians, note)``: ``note`` names the colour source and the defaults used.

    Raises:
        InvalidInputError: missing fields (listed), colours out of range, bad or duplicated ids.
    """
    cfg = config or PointCloudInputConfig()
    names = list(table.dtype.names or ())
    present = set(names)
    missing = [nm for nm in ["x", "y", "z"] + (["id"] if require_id else []) if nm not in present]
    if missing:
        raise InvalidInputError(f"{source}: point cloud is missing required {noun} {missing} (has {names})")
    cols = _Columns(table)
    used = {"x", "y", "z", "id", *skip}
    if colours is None:
        cset = colour_fields(present)
        if cset is None:
            detect_layout(names, source=source, noun=noun)   # raises, naming what is missing
            raise InvalidInputError(f"{source}: no colour {noun} for a plain point cloud (has {names})")
        rgb = colours_to_unit([table[nm] for nm in cset], cset, source=source)
        kinds = sorted({_NP_TO_PLY.get(table.dtype.fields[nm][0].str[1:], "?") for nm in cset})
        what = f"{'/'.join(kinds)} {'/'.join(cset)}"
        used |= set(cset)
    else:
        rgb, what = colours, "packed rgb"
    normals = None
    if all(nm in present for nm in NORMAL_FIELDS):
        normals = torch.from_numpy(cols.floats(list(NORMAL_FIELDS)))
        used |= set(NORMAL_FIELDS)
    n = table.shape[0]
    ids = (_ids_from_column(table["id"], source) if "id" in present
           else torch.from_numpy(np.arange(n, dtype=np.int64)))
    extras = {nm: torch.from_numpy(table[nm].astype(_torch_np(table.dtype.fields[nm][0])))
              for nm in names if nm not in used}
    g = points_to_gaussians(torch.from_numpy(cols.floats(["x", "y", "z"])), torch.from_numpy(rgb), cfg,
                            normals=normals, ids=ids, extras=extras)
    note = (f"plain point cloud ({n} points, colour from {what}"
            + (", with normals" if normals is not None else "") + f"); 3DGS parameters filled in: {cfg.describe()}")
    return g, note


def read_ply(path: str | Path, *, sanitize: bool = True, sanitize_config: SanitizeConfig | None = None,
             device: str | torch.device = "cpu",
             point_cloud: PointCloudInputConfig | None = None) -> PlyReadResult:
    """Read a 3DGS PLY file, or a plain coloured point cloud PLY (layout detected; module docstring).

    Args:
        path: the file.
        sanitize: apply :func:`sanitize_gaussians` (default); False returns raw values (the report
            still counts non-finite values, with ``sanitized=False``).
        sanitize_config: the sanitising policy.
        device: where the returned tensors live.
        point_cloud: how a plain point cloud becomes Gaussians (default
            :class:`~chorus_ros.core.plain_cloud.PointCloudInputConfig()`); unused for 3DGS files.

    Returns:
        :class:`PlyReadResult` (``gaussians, report = read_ply(path)`` also works); its ``layout``
        says which layout the file had.

    Raises:
        InvalidInputError: not a PLY, truncated, neither layout (the missing properties of both
            listed), a partial 3DGS layout, bad ``f_rest`` count, bad or duplicated ids, float
            colours outside [0, 1].
        FileNotFoundError: no such file.
    """
    source = str(path)
    data = Path(path).read_bytes()
    hdr = _parse_header(data, source)
    table = _read_vertex_table(data, hdr, source)
    layout = detect_layout(table.dtype.names or (), source=source, noun="PLY vertex properties")
    note = ""
    if layout == LAYOUT_3DGS:
        g = structured_to_gaussians(table, source=source, noun="PLY vertex properties")
    else:
        g, note = structured_points_to_gaussians(table, point_cloud, source=source, noun="PLY vertex properties")
    g, rep = sanitize_gaussians(g, sanitize_config, apply=sanitize)
    if torch.device(device) != g.device:
        g = g.to(device)
    return PlyReadResult(g, rep, hdr, layout, note)


# ---------------------------------------------------------------------------- write


def _code_for(name: str, t: torch.Tensor) -> str:
    """numpy type code (no byte order) for an extras tensor."""
    if t.dtype in (torch.bool, torch.uint8):
        return "u1"
    simple = {torch.int8: "i1", torch.int16: "i2", torch.int32: "i4", torch.float64: "f8"}
    if t.dtype in simple:
        return simple[t.dtype]
    if t.dtype == torch.int64:
        if t.numel() == 0:
            return "i4"
        a = t.numpy()
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= _UINT32_MAX:
            return "u4"
        if lo >= -2**31 and hi < 2**31:
            return "i4"
        raise InvalidInputError(f"extras[{name!r}] int64 range [{lo}, {hi}] fits no 32-bit integer type")
    if t.is_floating_point():
        return "f4"
    raise InvalidInputError(f"extras[{name!r}] has dtype {t.dtype}, which has no PLY/PointCloud2 type")


def gaussians_to_structured(g: GaussianArrays, *, byte_order: str = "<", write_normals: bool = True,
                            write_ids: bool = True, require_ids: bool = False, include_extras: bool = True,
                            extra_types: dict[str, str] | None = None) -> np.ndarray:
    """Pack ``g`` into a structured array in the reference field order (shared by the PLY writer
    and the PointCloud2 conversion)::

        x y z [nx ny nz] f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3 [extras] [id]

    Parameters are float32 (raw, non-finite values kept), ``id`` uint32. An extras tensor
    ``[N]`` is one field, ``[N, D]`` becomes ``name_0..name_{D-1}``; its type follows the dtype
    (int64 -> uint32 when it fits, else int32) unless ``extra_types[name]`` (a PLY type name such
    as 'ushort', or a numpy code such as 'u2') says otherwise.
    """
    g.validate()
    if byte_order not in ("<", ">"):
        raise InvalidInputError(f"byte_order must be '<' or '>', got {byte_order!r}")
    n, k = len(g), g.sh.shape[1]
    extra_types = dict(extra_types or {})
    cols: list[tuple[list[str], str, np.ndarray]] = []  # (names, numpy code, [N] or [N, C])

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    cols.append((["x", "y", "z"], "f4", f32(g.means)))
    if write_normals:
        cols.append((["nx", "ny", "nz"], "f4", np.zeros((n, 3), np.float32)))
    sh = g.sh.detach().to("cpu", torch.float32)
    cols.append(([f"f_dc_{i}" for i in range(3)], "f4", sh[:, 0].numpy()))
    if k > 1:
        rest = sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1))
        cols.append(([f"f_rest_{i}" for i in range(3 * (k - 1))], "f4", rest.numpy()))
    cols.append((["opacity"], "f4", f32(g.opacities)))
    cols.append(([f"scale_{i}" for i in range(3)], "f4", f32(g.log_scales)))
    cols.append(([f"rot_{i}" for i in range(4)], "f4", f32(g.quats)))
    reserved = set(_PARAM_NAMES) | {f"f_rest_{i}" for i in range(45)}
    for name, t in (g.extras.items() if include_extras else ()):
        tt = t.detach().cpu()
        if tt.ndim == 1:
            names = [name]
        elif tt.ndim == 2:
            names = [f"{name}_{i}" for i in range(tt.shape[1])]
        else:
            raise InvalidInputError(f"extras[{name!r}] has shape {tuple(tt.shape)}; extras must be [N] or [N, D]")
        if any(nm in reserved for nm in names) or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise InvalidInputError(f"extras name {name!r} clashes with a 3DGS field or is not a valid field name")
        req = extra_types.pop(name, None)
        code = _PLY_TO_NP.get(req, req) if req is not None else _code_for(name, tt)
        if code not in _NP_TO_PLY:
            raise InvalidInputError(f"extra_types[{name!r}] = {req!r} is not a PLY type (known: {sorted(_PLY_TO_NP)})")
        if tt.dtype == torch.bool:
            tt = tt.to(torch.uint8)
        arr = tt.numpy()
        if arr.dtype.kind in "iu" and np.dtype(code).kind in "iu" and arr.size:
            info = np.iinfo(np.dtype(code))
            if arr.min() < info.min or arr.max() > info.max:
                raise InvalidInputError(f"extras[{name!r}] range [{arr.min()}, {arr.max()}] does not fit "
                                        f"type {_NP_TO_PLY[code]!r}")
        cols.append((names, code, arr))
    if extra_types:
        raise InvalidInputError(f"extra_types names {sorted(extra_types)} that are not in g.extras "
                                f"({sorted(g.extras)})")
    if g.ids is None and require_ids:
        raise InvalidInputError("GaussianArrays.ids is required (stable Gaussian ids)")
    if write_ids and g.ids is not None:
        ids = g.ids.detach().cpu()
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise InvalidInputError(f"ids must have an integer dtype, got {ids.dtype}")
        ids = ids.numpy()  # numpy reductions: torch's are much slower on small CPU boxes
        if n and (ids.min() < 0 or ids.max() > _UINT32_MAX):
            raise InvalidInputError(f"ids must be in [0, 2^32-1], got range [{ids.min()}, {ids.max()}]")
        cols.append((["id"], "u4", ids))

    dt = np.dtype([(nm, byte_order + code) for names, code, _ in cols for nm in names])
    table = np.empty(n, dtype=dt)
    if byte_order == "<" and np.little_endian and all(np.dtype(c).itemsize == 4 for _, c, _ in cols):
        # fast path: every field is 4 bytes: write column blocks into a [N, F] float32 view
        mat = table.view(np.uint8).view(np.float32).reshape(n, dt.itemsize // 4)
        j = 0
        for names, code, arr in cols:
            a = arr.reshape(n, len(names))
            if code != "f4":
                a = a.astype(code).view(np.float32)
            mat[:, j: j + len(names)] = a
            j += len(names)
        return table
    for names, code, arr in cols:
        if len(names) == 1:
            table[names[0]] = arr.reshape(n)
        else:
            for j, nm in enumerate(names):
                table[nm] = arr[:, j]
    return table


def write_ply(path: str | Path, g: GaussianArrays, *, format: str = "binary_little_endian",
              write_ids: bool = True, write_normals: bool = True,
              extra_types: dict[str, str] | None = None, comments: list[str] | None = None) -> None:
    """Write ``g`` in the reference 3DGS PLY layout (module docstring).

    Args:
        path: output file (overwritten).
        g: the Gaussians; parameters are written as float32 (raw values, non-finite included).
        format: 'binary_little_endian' (default), 'binary_big_endian' or 'ascii' (slow; small files).
        write_ids: write ``g.ids`` as a ``uint`` property ``id`` (when ``g.ids`` is set).
        write_normals: write ``nx ny nz`` zeros like the reference implementation.
        extra_types: PLY type per extras name (e.g. ``{'label': 'ushort'}``); by default the type
            follows the tensor dtype (int64 -> 'uint' when it fits, else 'int'). An extras tensor
            ``[N, D]`` is written as ``name_0..name_{D-1}`` (read back as D scalar extras).
        comments: header comment lines.
    """
    if format not in _FORMATS:
        raise InvalidInputError(f"unknown PLY format {format!r} (known: {_FORMATS})")
    table = gaussians_to_structured(g, byte_order=">" if format == "binary_big_endian" else "<",
                                    write_normals=write_normals, write_ids=write_ids, extra_types=extra_types)
    _write_vertex_table(path, table, format, comments)


def _write_vertex_table(path: str | Path, table: np.ndarray, format: str, comments: list[str] | None) -> None:
    """Write a structured vertex ``table`` (its byte order matching ``format``) as one PLY element
    ``vertex`` with one property per field, in that order."""
    dt = table.dtype
    head = ["ply", f"format {format} 1.0"] + [f"comment {c}" for c in (comments or [])]
    head += [f"element vertex {len(table)}"]
    head += [f"property {_NP_TO_PLY[dt.fields[nm][0].str[1:]]} {nm}" for nm in dt.names]
    head += ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode("ascii"))
        if format == "ascii":
            fmts = ["%.9g" if dt.fields[nm][0].str[1:] == "f4" else "%.17g" if dt.fields[nm][0].kind == "f"
                    else "%d" for nm in dt.names]
            buf = io.StringIO()
            np.savetxt(buf, table, fmt=fmts, delimiter=" ")
            f.write(buf.getvalue().encode("ascii"))
        else:
            f.write(memoryview(table).cast("B") if table.flags.c_contiguous else table.tobytes())


def write_point_cloud_ply(path: str | Path, means: torch.Tensor, rgb: torch.Tensor, *, colour_type: str = "uchar",
                          normals: torch.Tensor | None = None, extras: dict[str, torch.Tensor] | None = None,
                          format: str = "binary_little_endian", comments: list[str] | None = None) -> None:
    """Write a plain coloured point cloud PLY (``x y z [nx ny nz] red green blue [extras]``), the
    layout :func:`read_ply` reads as 'pointcloud'.

    Args:
        path: output file (overwritten).
        means: ``[N, 3]`` positions, metres (written as float).
        rgb: ``[N, 3]`` colours in [0, 1].
        colour_type: 'uchar' (``round(255 * rgb)``, the usual point cloud layout) or 'float'
            (written unchanged as float ``red green blue``).
        normals: optional ``[N, 3]`` written as ``nx ny nz``.
        extras: optional ``[N]`` per-point attributes (e.g. ``label``), typed as in :func:`write_ply`.
        format: 'binary_little_endian', 'binary_big_endian' or 'ascii'.
        comments: header comment lines.
    """
    if format not in _FORMATS:
        raise InvalidInputError(f"unknown PLY format {format!r} (known: {_FORMATS})")
    if colour_type not in ("uchar", "float"):
        raise InvalidInputError(f"colour_type must be 'uchar' or 'float', got {colour_type!r}")
    xyz = means.detach().to("cpu", torch.float32).numpy()
    n = xyz.shape[0]
    col = rgb.detach().to("cpu", torch.float32).numpy()
    if xyz.shape != (n, 3) or col.shape != (n, 3):
        raise InvalidInputError(f"means and rgb must both be [N, 3], got {xyz.shape} and {col.shape}")
    if not np.all((col >= 0) & (col <= 1)):
        raise InvalidInputError("rgb must be in [0, 1]")
    cols: list[tuple[str, str, np.ndarray]] = [(nm, "f4", xyz[:, j]) for j, nm in enumerate("xyz")]
    if normals is not None:
        nrm = normals.detach().to("cpu", torch.float32).numpy()
        cols += [(nm, "f4", nrm[:, j]) for j, nm in enumerate(("nx", "ny", "nz"))]
    if colour_type == "uchar":
        c8 = np.clip(np.round(col.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        cols += [(nm, "u1", c8[:, j]) for j, nm in enumerate(("red", "green", "blue"))]
    else:
        cols += [(nm, "f4", col[:, j]) for j, nm in enumerate(("red", "green", "blue"))]
    for name, t in (extras or {}).items():
        tt = t.detach().cpu()
        if tt.ndim != 1 or tt.shape[0] != n:
            raise InvalidInputError(f"extras[{name!r}] must be [{n}], got {tuple(tt.shape)}")
        code = _code_for(name, tt)
        cols.append((name, code, (tt.to(torch.uint8) if tt.dtype == torch.bool else tt).numpy()))
    order = ">" if format == "binary_big_endian" else "<"
    dt = np.dtype([(nm, order + code) for nm, code, _ in cols])
    table = np.empty(n, dtype=dt)
    for nm, _, a in cols:
        table[nm] = a
    _write_vertex_table(path, table, format, comments)
