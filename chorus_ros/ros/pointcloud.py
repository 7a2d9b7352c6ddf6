"""``sensor_msgs/PointCloud2`` <-> :class:`~chorus_ros.core.gaussians.GaussianArrays`.

Pure conversions (numpy structured arrays, no per-point Python loops, no ``rclpy.init()``).

Layout written by :func:`gaussians_to_pointcloud2` (``height = 1``, little-endian, no padding)::

    x y z  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3  [extras]  id

Every parameter field is FLOAT32 and holds the *raw* 3DGS value (opacity logit, log-scale,
wxyz quaternion, SH coefficients with ``f_rest`` channel-major exactly as in a 3DGS PLY); ``id``
is UINT32. So ``point_step = 4 * (15 + 3*(K-1))`` bytes without extras, e.g. 60 for SH degree 0
and 240 for degree 3.

:func:`pointcloud2_to_gaussians` reads fields *by name* at their declared offset and datatype
(any order, padding, FLOAT64 parameters, big-endian data), and rejects malformed messages with
:class:`~chorus_ros.core.errors.InvalidInputError` naming the problem: missing fields (listed),
duplicated fields, unsupported datatypes or ``count != 1``, fields past ``point_step``,
``row_step``/data size mismatches, missing or duplicated ids, non-finite values (count per
field; optionally dropped instead), and values no float writer produces for a Gaussian
(subnormal or beyond 1e15 in positions, opacities, scales or rotations, see
:func:`implausible_values`): the sign of data written in the other byte order than
``is_bigendian`` says, which the error then names. Map limits (coordinate and scale ranges)
are checked by the map (:class:`~chorus_ros.core.map.MapConfig`).

Plain coloured point clouds (a SLAM system's ``PointXYZRGB`` map) are decoded too, through the
same core function as plain PLY files
(:func:`chorus_ros.core.ply.structured_points_to_gaussians`, defaults of
:class:`~chorus_ros.core.plain_cloud.PointCloudInputConfig`): a cloud with no 3DGS parameter
field, FLOAT32/FLOAT64 ``x y z`` and a colour, given as

* the packed ``rgb`` (or ``rgba``) field of PCL: FLOAT32 (or UINT32) whose 4 bytes, read as a
  uint32 in the message's byte order, are ``0xAARRGGBB``; or
* separate ``r g b`` / ``red green blue`` fields: UINT8 (0-255) or FLOAT32 (0-1).

``id`` is optional there (absent: ``0..N-1``, see :attr:`CloudDecodeResult.ids_from_message`);
``nx ny nz`` are used as the config says; other fields become extras. The result's ``layout``
says which layout was decoded.
"""
from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.plain_cloud import (LAYOUT_3DGS, LAYOUT_POINTCLOUD, PointCloudInputConfig, colour_fields,
                                         detect_layout)
from chorus_ros.core.ply import (gaussians_to_structured, ply_property_names, structured_points_to_gaussians,
                                 structured_to_gaussians)

__all__ = [
    "FieldSpec",
    "POINTFIELD_TYPES",
    "pointcloud2_fields_for",
    "point_step_of",
    "make_point_fields",
    "gaussians_to_pointcloud2",
    "pointcloud2_to_gaussians",
    "decode_pointcloud2",
    "CloudDecodeResult",
    "PACKED_RGB_FIELDS",
    "is_plain_cloud",
    "implausible_values",
]

POINTFIELD_TYPES: dict[int, str] = {
    PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}
"""PointField datatype constant -> numpy type code (without byte order)."""
_CODE_TO_PF = {v: k for k, v in POINTFIELD_TYPES.items()}
_PF_NAMES = {PointField.INT8: "INT8", PointField.UINT8: "UINT8", PointField.INT16: "INT16",
             PointField.UINT16: "UINT16", PointField.INT32: "INT32", PointField.UINT32: "UINT32",
             PointField.FLOAT32: "FLOAT32", PointField.FLOAT64: "FLOAT64"}
_PARAM_FIELDS = frozenset(ply_property_names(3))
PACKED_RGB_FIELDS = ("rgb", "rgba")
"""PCL's packed colour fields (4 bytes: 0xAARRGGBB as a uint32), in order of preference."""


class FieldSpec(NamedTuple):
    """One PointCloud2 field, independent of the message classes."""

    name: str
    offset: int
    """Byte offset inside a point."""
    datatype: int
    """``sensor_msgs/PointField`` datatype constant (7 = FLOAT32, 6 = UINT32, ...)."""
    count: int = 1


def pointcloud2_fields_for(sh_degree: int) -> list[FieldSpec]:
    """The fields :func:`gaussians_to_pointcloud2` writes for ``sh_degree`` (no extras):
    FLOAT32 ``x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3`` then UINT32 ``id``,
    packed without padding (offset = 4 * index)."""
    names = ply_property_names(sh_degree)
    specs = [FieldSpec(nm, 4 * i, PointField.FLOAT32) for i, nm in enumerate(names)]
    specs.append(FieldSpec("id", 4 * len(names), PointField.UINT32))
    return specs


def point_step_of(specs: list[FieldSpec]) -> int:
    """Bytes per point needed by ``specs`` (end of the last-ending field)."""
    return max((s.offset + np.dtype(POINTFIELD_TYPES[s.datatype]).itemsize * s.count for s in specs), default=0)


def make_point_fields(specs: list[FieldSpec]) -> list[PointField]:
    """``sensor_msgs/PointField`` messages for ``specs``."""
    return [PointField(name=s.name, offset=s.offset, datatype=s.datatype, count=s.count) for s in specs]


def _specs_of_dtype(dt: np.dtype) -> list[FieldSpec]:
    out = []
    for nm in dt.names:
        fdt, off = dt.fields[nm][:2]
        out.append(FieldSpec(nm, off, _CODE_TO_PF[fdt.str[1:]]))
    return out


def gaussians_to_pointcloud2(g: GaussianArrays, header: Header, *, include_extras: bool = False,
                             extra_types: dict[str, str] | None = None) -> PointCloud2:
    """Pack Gaussians into a PointCloud2 (module docstring layout; raw parameters).

    Args:
        g: Gaussians with ``ids`` (required: the receiver keys its map on them).
        header: copied into the message (stamp and frame of the map).
        include_extras: also write ``g.extras`` as fields between ``rot_3`` and ``id``
            (``[N]`` -> one field, ``[N, D]`` -> ``name_0..name_{D-1}``; dtype as in
            :func:`chorus_ros.core.ply.gaussians_to_structured`).
        extra_types: per-extra numpy/PLY type override (only with ``include_extras``).

    ``is_dense`` is True when every parameter is finite.
    """
    if not isinstance(g, GaussianArrays):
        raise InvalidInputError(f"expected GaussianArrays, got {type(g).__name__}")
    table = gaussians_to_structured(g, byte_order="<", write_normals=False, write_ids=True, require_ids=True,
                                    include_extras=include_extras, extra_types=extra_types)
    n, step = len(table), table.dtype.itemsize
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = n
    msg.fields = make_point_fields(_specs_of_dtype(table.dtype))
    msg.is_bigendian = False
    msg.point_step = step
    msg.row_step = step * n
    data = array.array("B")
    data.frombytes(memoryview(table).cast("B"))  # one copy; the setter keeps an array('B') as is
    msg.data = data
    msg.is_dense = _all_finite(g)
    return msg


@dataclass
class CloudDecodeResult:
    """What :func:`decode_pointcloud2` returns."""

    gaussians: GaussianArrays
    """Decoded Gaussians (float32 parameters, int64 ids, other fields as extras)."""
    nonfinite: dict[str, int] = field(default_factory=dict)
    """Field name -> number of non-finite values found (only fields with some)."""
    dropped: int = 0
    """Points dropped because of non-finite parameters (``drop_nonfinite=True``)."""
    layout: str = LAYOUT_3DGS
    """'3dgs' (every 3DGS field) or 'pointcloud' (a plain coloured cloud, parameters defaulted)."""
    ids_from_message: bool = True
    """False when a plain cloud had no ``id`` field and got ids ``0..N-1``."""
    note: str = ""
    """For 'pointcloud': the colour source and the defaults filled in."""


def _message_dtype(msg: PointCloud2) -> np.dtype:
    """Validated numpy structured dtype of one point of ``msg``."""
    names = [f.name for f in msg.fields]
    dups = sorted({nm for nm in names if names.count(nm) > 1})
    if dups:
        raise InvalidInputError(f"PointCloud2 has duplicated fields {dups}")
    order = ">" if msg.is_bigendian else "<"
    step = int(msg.point_step)
    fmts, offs = [], []
    for f in msg.fields:
        code = POINTFIELD_TYPES.get(int(f.datatype))
        if code is None:
            raise InvalidInputError(f"PointCloud2 field {f.name!r} has unsupported datatype {f.datatype} "
                                    f"(supported: {', '.join(f'{v}={k}' for k, v in _PF_NAMES.items())})")
        if int(f.count) != 1:
            raise InvalidInputError(f"PointCloud2 field {f.name!r} has count {f.count}; only count=1 is supported")
        fmts.append(order + code)
        offs.append(int(f.offset))
    ends = [(o + np.dtype(c).itemsize, nm) for o, c, nm in zip(offs, fmts, names)]
    need, last = max(ends, default=(0, None))
    if need > step:
        raise InvalidInputError(f"PointCloud2 point_step {step} is smaller than the fields need: field {last!r} "
                                f"ends at byte {need}")
    spans = sorted((o, e, nm) for o, (e, nm) in zip(offs, ends))
    for (o1, e1, n1), (o2, _, n2) in zip(spans, spans[1:]):
        if o2 < e1:
            raise InvalidInputError(f"PointCloud2 fields {n1!r} and {n2!r} overlap (offsets {o1} and {o2})")
    return np.dtype({"names": names, "formats": fmts, "offsets": offs, "itemsize": max(step, 1)})


def _all_finite(g: GaussianArrays) -> bool:
    # numpy: torch.isfinite on CPU is an order of magnitude slower
    return all(bool(np.isfinite(t.detach().to("cpu", torch.float32).numpy()).all())
               for t in (g.means, g.sh, g.opacities, g.log_scales, g.quats))


def _nonfinite_by_field(g: GaussianArrays) -> dict[str, int]:
    """Field name -> count of non-finite values (fast all-finite check first)."""
    n, k = len(g), g.sh.shape[1]
    parts = {
        ("x", "y", "z"): g.means.numpy(),
        tuple(f"f_dc_{c}" for c in range(3)): g.sh[:, 0].numpy(),
        tuple(f"f_rest_{i}" for i in range(3 * (k - 1))): g.sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1)).numpy(),
        ("opacity",): g.opacities.numpy().reshape(n, 1),
        tuple(f"scale_{i}" for i in range(3)): g.log_scales.numpy(),
        tuple(f"rot_{i}" for i in range(4)): g.quats.numpy(),
    }
    out: dict[str, int] = {}
    for names, a in parts.items():
        if a.size == 0 or np.isfinite(a).all():
            continue
        for nm, c in zip(names, (~np.isfinite(a)).sum(axis=0).tolist()):
            if c:
                out[nm] = int(c)
    return out


_PLAUSIBLE_FIELDS = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_TINY, _HUGE = 1e-30, 1e15


def implausible_values(table: np.ndarray) -> dict[str, int]:
    """Field name -> count of values no Gaussian writer produces: finite but subnormal-small
    (``0 < |v| < 1e-30``) or beyond ``1e15``, in the position, opacity, scale and rotation
    fields of a structured ``table`` (SH coefficients are not checked). Float32 data read in the
    wrong byte order almost always shows such values (1.0 byte-swapped is 4.6e-41)."""
    out: dict[str, int] = {}
    names = table.dtype.names or ()
    for nm in _PLAUSIBLE_FIELDS:
        if nm not in names or table.dtype.fields[nm][0].kind != "f":
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            a = np.abs(table[nm].astype(np.float64))
            bad = int(np.count_nonzero(((a > 0) & (a < _TINY)) | ((a > _HUGE) & np.isfinite(a))))
        if bad:
            out[nm] = bad
    return out


def _check_byte_order(msg: PointCloud2, table: np.ndarray, dt: np.dtype) -> None:
    """Refuse data that decode to implausible values, naming the byte order when the other one
    would decode cleanly."""
    bad = implausible_values(table)
    if not bad:
        return
    other = dt.newbyteorder()  # swaps every field's byte order
    swapped = np.frombuffer(table.tobytes(), dtype=other, count=len(table))
    flag = "big" if msg.is_bigendian else "little"
    hint = ""
    if not implausible_values(swapped):
        hint = (f"; read as {'little' if msg.is_bigendian else 'big'}-endian they are plausible, so the data "
                f"are probably in the other byte order than is_bigendian={bool(msg.is_bigendian)} says")
    raise InvalidInputError(f"PointCloud2 ({flag}-endian per is_bigendian) decodes to implausible values "
                            f"(subnormal or > {_HUGE:g}; count per field: {bad}){hint}; the cloud cannot be "
                            f"decoded exactly and is refused")


def is_plain_cloud(names: set[str]) -> bool:
    """True for the field names of a plain coloured point cloud: no 3DGS parameter field, ``x y z``
    and a colour (a field set or a packed rgb field); the rule of
    :func:`chorus_ros.core.plain_cloud.detect_layout`, which PLY maps use too."""
    try:
        return detect_layout(names, packed_colours=PACKED_RGB_FIELDS) == LAYOUT_POINTCLOUD
    except InvalidInputError:
        return False


def _unpack_rgb(msg: PointCloud2, dt: np.dtype, name: str, n: int) -> np.ndarray:
    """``[N, 3]`` float32 colours in [0, 1] from a packed ``rgb``/``rgba`` field (module docstring)."""
    code = dt.fields[name][0].str[1:]
    if code not in ("f4", "u4", "i4"):
        raise InvalidInputError(f"PointCloud2 packed colour field {name!r} must be FLOAT32 or UINT32 (4 bytes "
                                f"0xAARRGGBB), got {_PF_NAMES[_CODE_TO_PF[code]]}")
    order = ">" if msg.is_bigendian else "<"
    off = dt.fields[name][1]
    as_int = np.dtype({"names": [name], "formats": [order + "u4"], "offsets": [off], "itemsize": dt.itemsize})
    v = (np.frombuffer(msg.data, dtype=as_int, count=n)[name].astype(np.uint32) if n
         else np.zeros(0, np.uint32))
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], 1).astype(np.float32)
    return rgb / np.float32(255.0)


def _decode_plain(msg: PointCloud2, table: np.ndarray, dt: np.dtype, drop_nonfinite: bool,
                  config: PointCloudInputConfig | None) -> CloudDecodeResult:
    names = set(dt.names)
    for nm in ("x", "y", "z"):
        if dt.fields[nm][0].kind != "f":
            raise InvalidInputError(f"PointCloud2 field {nm!r} must be FLOAT32 or FLOAT64, got "
                                    f"{_PF_NAMES[_CODE_TO_PF[dt.fields[nm][0].str[1:]]]}")
    if "id" in names and dt.fields["id"][0].kind not in "iu":
        raise InvalidInputError(f"PointCloud2 field 'id' must be an integer datatype, got "
                                f"{_PF_NAMES[_CODE_TO_PF[dt.fields['id'][0].str[1:]]]}")
    _check_byte_order(msg, table, dt)
    colours = None
    if colour_fields(names) is None:
        packed = next(nm for nm in PACKED_RGB_FIELDS if nm in names)
        colours = _unpack_rgb(msg, dt, packed, len(table))
    g, note = structured_points_to_gaussians(table, config, source="PointCloud2", noun="fields", colours=colours,
                                             skip=PACKED_RGB_FIELDS)
    if colours is not None:
        note = note.replace("colour from packed rgb", f"colour from packed {packed}")
    nonfinite = {k: v for k, v in _nonfinite_by_field(g).items() if k in ("x", "y", "z")}
    nonfinite.update({nm: int(c) for nm in ("red", "green", "blue", "r", "g", "b") if nm in names
                      and dt.fields[nm][0].kind == "f" and (c := np.count_nonzero(~np.isfinite(table[nm])))})
    g, dropped = _drop_nonfinite(g, nonfinite, drop_nonfinite)
    return CloudDecodeResult(g, nonfinite, dropped, LAYOUT_POINTCLOUD, "id" in names, note)


def _drop_nonfinite(g: GaussianArrays, nonfinite: dict, drop: bool) -> tuple[GaussianArrays, int]:
    """Refuse a cloud with non-finite values (``nonfinite``: count per field), or with ``drop``
    remove those points; returns the Gaussians kept and how many were dropped."""
    if not nonfinite:
        return g, 0
    if not drop:
        raise InvalidInputError(f"PointCloud2 has non-finite values (count per field: {nonfinite}); "
                                "pass drop_nonfinite=True to drop those points")
    keep = g.finite_mask()
    return g.index(keep), int((~keep).sum())


def decode_pointcloud2(msg: PointCloud2, *, drop_nonfinite: bool = False,
                       point_cloud: PointCloudInputConfig | None = None) -> CloudDecodeResult:
    """Like :func:`pointcloud2_to_gaussians`, also returning the non-finite counts per field and
    the layout decoded (``point_cloud``: the defaults for a plain coloured cloud)."""
    if not isinstance(msg, PointCloud2):
        raise InvalidInputError(f"expected sensor_msgs/PointCloud2, got {type(msg).__name__}")
    names = {f.name for f in msg.fields}
    dt = _message_dtype(msg)
    plain = detect_layout([f.name for f in msg.fields], source="PointCloud2", noun="fields",
                          packed_colours=PACKED_RGB_FIELDS) == LAYOUT_POINTCLOUD
    if not plain and "id" not in names:
        raise InvalidInputError("PointCloud2 has no 'id' field: Gaussian ids are required "
                                f"(fields: {[f.name for f in msg.fields]})")
    w, h, step = int(msg.width), int(msg.height), int(msg.point_step)
    if int(msg.row_step) != w * step:
        raise InvalidInputError(f"PointCloud2 row_step {msg.row_step} != width * point_step = {w} * {step} "
                                "(row padding is not supported)")
    nbytes = len(msg.data)
    if nbytes != w * h * step:
        raise InvalidInputError(f"PointCloud2 data has {nbytes} bytes, expected width * height * point_step = "
                                f"{w} * {h} * {step} = {w * h * step}")
    n = w * h
    table = np.frombuffer(msg.data, dtype=dt, count=n) if n else np.empty(0, dtype=dt)
    if plain:
        return _decode_plain(msg, table, dt, drop_nonfinite, point_cloud)
    for nm in ("id",):
        if dt.fields[nm][0].kind not in "iu":
            raise InvalidInputError(f"PointCloud2 field 'id' must be an integer datatype, got "
                                    f"{_PF_NAMES[_CODE_TO_PF[dt.fields[nm][0].str[1:]]]}")
    for nm in names & _PARAM_FIELDS:
        if dt.fields[nm][0].kind != "f":
            raise InvalidInputError(f"PointCloud2 field {nm!r} must be FLOAT32 or FLOAT64, got "
                                    f"{_PF_NAMES[_CODE_TO_PF[dt.fields[nm][0].str[1:]]]}")
    _check_byte_order(msg, table, dt)
    g = structured_to_gaussians(table, source="PointCloud2", noun="fields", require_id=True)
    nonfinite = _nonfinite_by_field(g)
    g, dropped = _drop_nonfinite(g, nonfinite, drop_nonfinite)
    return CloudDecodeResult(g, nonfinite, dropped)


def pointcloud2_to_gaussians(msg: PointCloud2, *, drop_nonfinite: bool = False,
                             point_cloud: PointCloudInputConfig | None = None) -> GaussianArrays:
    """Decode a PointCloud2 written by :func:`gaussians_to_pointcloud2` (or any cloud with the
    same field names: order, padding, FLOAT64 and big-endian are handled), or a plain coloured
    point cloud (module docstring).

    Args:
        msg: the cloud; ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3 id`` required,
            ``f_rest_*`` optional (SH degree from their count), other fields -> ``extras``;
            or ``x y z`` + packed ``rgb`` / ``r g b`` (``id`` optional).
        drop_nonfinite: drop points with a non-finite parameter instead of raising.
        point_cloud: defaults for a plain cloud (:class:`~chorus_ros.core.plain_cloud.PointCloudInputConfig`).

    Returns:
        :class:`GaussianArrays` with float32 parameters and int64 ids, on the CPU.

    Raises:
        InvalidInputError: malformed message (see the module docstring), naming the problem.
    """
    return decode_pointcloud2(msg, drop_nonfinite=drop_nonfinite, point_cloud=point_cloud).gaussians
