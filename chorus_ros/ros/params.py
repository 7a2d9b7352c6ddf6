"""Mirror configuration dataclasses into ROS 2 parameters (one source of truth).

Every field of a config dataclass becomes one parameter whose
:class:`~rcl_interfaces.msg.ParameterDescriptor` is derived from the class itself:

* ``description``: the docstring written right below the field (parsed with :mod:`ast`);
* ``type``: from the annotation (``int``/``float``/``bool``/``str`` and lists/tuples of them);
  ``X | None`` fields are dynamically typed and start unset (``None``);
* ``read_only``: for fields that need a reload (the caller passes fnmatch patterns, or the
  field's ``metadata={'read_only': True}``);
* ``integer_range``/``floating_point_range``: from the caller's ``ranges`` or the field's
  ``metadata={'range': (lo, hi)}``.

Nested dataclasses flatten to dotted names (``pipeline.render.near``), also when the annotation is
loose (``object``) but the default holds a dataclass. Fields whose type has no
ROS parameter equivalent (dicts, lists of dataclasses) are skipped and listed in
:attr:`ParameterBinding.skipped`.

The pure part (:func:`field_docstrings`, :func:`param_specs`, :func:`build_config`) needs no
``rclpy.init()``; :class:`ParameterBinding` declares the parameters on a node, validates
changes in an on-set callback (a change is accepted only if the dataclass can be rebuilt with
it) and reports accepted changes to the node.

Example::

    binding = ParameterBinding(node, ChorusNodeConfig(), read_only=["checkpoint", "pipeline.*"],
                               on_change=node.apply_config)
    cfg = binding.config          # a ChorusNodeConfig with the node's parameter values
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import textwrap
import threading
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

__all__ = ["ParamSpec", "field_docstrings", "param_specs", "build_config", "flatten_config",
           "validate_tree", "markdown_table", "ParameterBinding"]

_SCALARS = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAYS = {
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
}


@dataclass
class ParamSpec:
    """One mirrored parameter."""

    name: str
    """Dotted parameter name (prefix + field path)."""
    path: tuple[str, ...]
    """Attribute path inside the root dataclass."""
    ptype: int
    """rcl_interfaces ParameterType of the value."""
    default: Any
    """Value in the default config (ROS form: lists, not tuples)."""
    description: str
    """The field's docstring."""
    read_only: bool = False
    """True when changing it needs a reload (declared read-only)."""
    value_range: tuple | None = None
    """(lo, hi) or (lo, hi, step) declared for this parameter."""
    optional: bool = False
    """The field accepts None (declared dynamically typed, unset = None)."""
    container: type | None = None
    """tuple or list for array fields (restored when building the dataclass)."""

    def descriptor(self) -> ParameterDescriptor:
        """The ParameterDescriptor declared for this parameter."""
        d = ParameterDescriptor(name=self.name, type=self.ptype, description=self.description,
                                read_only=self.read_only)
        if self.optional:
            d.dynamic_typing = True
            d.type = ParameterType.PARAMETER_NOT_SET
            d.additional_constraints = f"unset (None) or {_TYPE_NAMES[self.ptype]}"
        if self.value_range is not None:
            lo, hi, *step = self.value_range
            if self.ptype == ParameterType.PARAMETER_INTEGER:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi),
                                                step=int(step[0]) if step else 0)]
            elif self.ptype == ParameterType.PARAMETER_DOUBLE:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                             step=float(step[0]) if step else 0.0)]
        return d


_TYPE_NAMES = {v: k.__name__ for k, v in _SCALARS.items()}
_TYPE_NAMES.update({v: f"{k.__name__}[]" for k, v in _ARRAYS.items()})


# ----------------------------------------------------------------------------- docstrings
def field_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for the string literals written right below dataclass fields
    (base classes included; a subclass's docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(src)
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if node is None:
            continue
        body = node.body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


# ------------------------------------------------------------------------------- typing
def _classify(tp: Any) -> tuple[str, Any, bool, type | None]:
    """-> (kind, ros_or_dataclass, optional, container); kind in scalar|array|dataclass|skip."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return "skip", None, False, None
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return ("skip" if optional else "dataclass"), tp, False, None
    if tp in _SCALARS:
        return "scalar", _SCALARS[tp], optional, None
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and len(set(args)) == 1 and args[0] in _ARRAYS:
            return "array", _ARRAYS[args[0]], optional, (tuple if origin is tuple else list)
    return "skip", None, False, None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _to_ros(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def param_specs(config: Any, prefix: str = "", *, read_only: Iterable[str] = (),
                ranges: Mapping[str, tuple] | None = None,
                skipped: list[str] | None = None) -> list[ParamSpec]:
    """Flatten a dataclass instance into parameter specs (no ROS node needed).

    Args:
        config: a dataclass *instance*; its values become the defaults.
        prefix: dotted prefix of every name ('' for none).
        read_only: fnmatch patterns of dotted names declared read-only.
        ranges: dotted name -> (lo, hi) or (lo, hi, step).
        skipped: if given, receives the dotted names of fields that cannot be parameters.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"param_specs needs a dataclass instance, got {config!r}")
    ranges = dict(ranges or {})
    read_only = list(read_only)
    out: list[ParamSpec] = []
    _walk(config, prefix, (), read_only, ranges, out, skipped if skipped is not None else [])
    return out


def _walk(obj, prefix, path, read_only, ranges, out, skipped) -> None:
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    docs = field_docstrings(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{prefix}.{f.name}" if prefix else f.name
        kind, info, optional, container = _classify(hints.get(f.name, Any))
        value = getattr(obj, f.name)
        if kind == "skip" and dataclasses.is_dataclass(value) and not isinstance(value, type):
            kind = "dataclass"    # loosely annotated (``object``) field holding a config dataclass
        if kind == "dataclass":
            _walk(value, name, path + (f.name,), read_only, ranges, out, skipped)
            continue
        if kind == "skip":
            skipped.append(name)
            continue
        rng = ranges.get(name, f.metadata.get("range"))
        ro = bool(f.metadata.get("read_only", False)) or _matches(name, read_only)
        desc = docs.get(f.name, "")
        out.append(ParamSpec(name, path + (f.name,), info, _to_ros(value), desc, ro,
                             tuple(rng) if rng is not None else None, optional, container))


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted name: ROS value}`` of a dataclass instance (mirror of :func:`build_config`)."""
    return {s.name: s.default for s in param_specs(config, prefix)}


def _set_path(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """Copy of dataclass ``obj`` with the field at ``path`` replaced (nested copies made)."""
    head, *rest = path
    if rest:
        value = _set_path(getattr(obj, head), tuple(rest), value)
    return dataclasses.replace(obj, **{head: value})


def _from_ros(spec: ParamSpec, value: Any) -> Any:
    if value is None:
        if not spec.optional:
            raise ValueError(f"parameter {spec.name!r} cannot be unset")
        return None
    kind = spec.ptype
    if kind == ParameterType.PARAMETER_DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in _ARRAYS.values():
        value = list(value)
        if kind == ParameterType.PARAMETER_DOUBLE_ARRAY:
            value = [float(v) for v in value]
        value = spec.container(value) if spec.container else value
    expected = {v: k for k, v in _SCALARS.items()}.get(kind)
    if expected is not None and not (isinstance(value, expected)
                                     and not (expected is int and isinstance(value, bool))):
        raise ValueError(f"parameter {spec.name!r} must be {expected.__name__}, got {value!r}")
    return value


def build_config(default: Any, values: Mapping[str, Any], prefix: str = "",
                 specs: list[ParamSpec] | None = None) -> Any:
    """Copy of dataclass ``default`` with the given ``{dotted name: ROS value}`` applied.

    Raises ValueError for unknown names, wrong types, values outside declared ranges, or any
    error the dataclasses raise for the new values (``__post_init__`` or ``validate()``)."""
    specs = specs if specs is not None else param_specs(default, prefix)
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; known: {sorted(by_name)}")
    cfg = default
    for name, v in values.items():
        spec = by_name[name]
        v = _from_ros(spec, v)
        if spec.value_range is not None and v is not None:
            lo, hi = spec.value_range[:2]
            if not lo <= v <= hi:
                raise ValueError(f"parameter {name!r} = {v!r} is outside [{lo}, {hi}]")
        cfg = _set_path(cfg, spec.path, v)
    if values:
        validate_tree(cfg)
    return cfg


def validate_tree(cfg: Any) -> None:
    """Call ``validate()`` on ``cfg`` and every nested dataclass that defines it (the core
    configs validate themselves this way); their errors propagate."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return
    for f in dataclasses.fields(cfg):
        validate_tree(getattr(cfg, f.name))
    fn = getattr(cfg, "validate", None)
    if callable(fn):
        fn()


def markdown_table(specs: list[ParamSpec]) -> str:
    """A markdown table of parameters: name, type, default, read-only/range, description."""
    rows = ["| parameter | type | default | | description |", "|---|---|---|---|---|"]
    for sp in specs:
        kind = _TYPE_NAMES.get(sp.ptype, "?") + (" or unset" if sp.optional else "")
        default = "unset" if sp.default is None else f"`{sp.default!r}`"
        notes = []
        if sp.read_only:
            notes.append("read-only")
        if sp.value_range is not None:
            notes.append(f"[{sp.value_range[0]}, {sp.value_range[1]}]")
        desc = " ".join(sp.description.split()).replace("|", "\\|")
        rows.append(f"| `{sp.name}` | {kind} | {default} | {', '.join(notes)} | {desc} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- binding
class ParameterBinding:
    """Declares a config dataclass's parameters on a node and keeps :attr:`config` in sync.

    Args:
        node: the rclpy node.
        default: default config instance (values are overridden by the node's parameter
            overrides, e.g. from a ``--params-file``).
        prefix: dotted prefix of the parameter names.
        read_only: fnmatch patterns of names that need a reload.
        ranges: dotted name -> (lo, hi[, step]).
        on_change: called as ``on_change(new_config, changed_names)`` after a change was
            accepted (from the post-set callback); may raise ``ValueError`` to refuse it *before*
            by being given as ``validate`` instead.
        validate: called as ``validate(candidate_config, changed_names)`` in the on-set callback;
            raise ValueError to reject the change with that message.
    """

    def __init__(self, node, default: Any, prefix: str = "", *, read_only: Iterable[str] = (),
                 ranges: Mapping[str, tuple] | None = None,
                 on_change: Callable[[Any, list[str]], None] | None = None,
                 validate: Callable[[Any, list[str]], None] | None = None) -> None:
        self.node = node
        self.prefix = prefix
        self.skipped: list[str] = []
        self.specs = param_specs(default, prefix, read_only=read_only, ranges=ranges,
                                 skipped=self.skipped)
        self._by_name = {s.name: s for s in self.specs}
        self._default = default
        self._on_change = on_change
        self._validate = validate
        self._lock = threading.Lock()
        self._pending: Any = None
        values = {}
        for s in self.specs:
            p = node.declare_parameter(s.name, s.default, s.descriptor())
            values[s.name] = p.value
        self.config = build_config(default, values, prefix, self.specs)
        if validate is not None:   # the start-up values (params file, overrides) too
            validate(self.config, [s.name for s in self.specs])
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._post_set)

    def names(self) -> list[str]:
        """Dotted names of every declared parameter."""
        return [s.name for s in self.specs]

    def _on_set(self, params) -> SetParametersResult:
        mine = {p.name: p.value for p in params if p.name in self._by_name}
        if not mine:
            return SetParametersResult(successful=True)
        try:
            ro = [n for n in mine if self._by_name[n].read_only]
            if ro:
                raise ValueError(f"parameters {ro} are read-only (restart the node to change them)")
            with self._lock:
                candidate = build_config(self.config, mine, self.prefix, self.specs)
            if self._validate is not None:
                self._validate(candidate, sorted(mine))
        except (ValueError, TypeError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        except Exception as e:  # noqa: BLE001 - a parameter request must never end the executor
            return SetParametersResult(successful=False, reason=f"unexpected {type(e).__name__}: {e}")
        return SetParametersResult(successful=True)

    def _post_set(self, params) -> None:
        mine = {p.name: p.value for p in params if p.name in self._by_name}
        if not mine:
            return
        with self._lock:
            self.config = build_config(self.config, mine, self.prefix, self.specs)
            cfg = self.config
        if self._on_change is not None:
            try:
                self._on_change(cfg, sorted(mine))
            except Exception as e:  # noqa: BLE001 - reported, never the end of the executor
                errors = getattr(self.node, "errors", None)
                text = f"applying parameters {sorted(mine)}: unexpected {type(e).__name__}: {e}"
                if errors is not None:
                    errors.report("parameters", text)
                else:
                    self.node.get_logger().error(text)
