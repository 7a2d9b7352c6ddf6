"""Make spconv 2.3 correct and trainable on machines without CUDA. Two fixes:

1. **Race in the CPU scatter-add (wrong results).** ``GatherCPU::scatter_add`` (used by every
   CPU convolution, forward and backward, through ``SpconvOps.scatter_add_cpu``) runs an
   OpenMP loop whose lambda captures the row pointers ``buf`` and ``out_ptr`` *by reference*,
   so with more than one thread the threads overwrite each other's pointers and add rows into
   the wrong outputs: with 2 threads about half of the convolutions of a 3600-voxel plane come
   out wrong, at random (spconv 2.3.8, cumm 0.7.11). It is replaced by ``torch.index_add_`` on
   zero-copy views of the same buffers (within one kernel offset the output rows are unique,
   so this is the same sum); the original runs single-threaded for dtypes numpy cannot view.

2. **CPU backward.** spconv's CPU build runs forward passes, but its backward (``indice_conv_backward`` and friends
in ``spconv.pytorch.ops``) asks for the current CUDA stream through
``spconv.pytorch.cppcore.get_current_stream``, which calls ``torch.cuda.current_stream()``
unconditionally and raises when no driver is present. The CPU kernels ignore the stream, so
returning the null stream (0) when CUDA is unavailable is all it takes.

   ``ops`` and ``hash`` import the function by name, so it is replaced in every loaded
   ``spconv.pytorch`` module that holds the original; with CUDA it defers to the original.

:func:`apply` is idempotent and called lazily by :func:`import_spconv` (the encoder's only way
of importing spconv). Both patches touch CPU code paths only; GPU behaviour is unchanged.

3. **A log line on every process's first encode.** ``SparseConvTensor`` is built through
   torch.fx's ``ProxyableClassMeta``, whose ``__call__`` asks ``is_fx_tracing()``; torch 2.x
   then logs once per process "is_fx_tracing will return true for both fx.symbolic_trace and
   torch.export..." (a deprecation notice aimed at spconv, meaningless to us: we never trace).
   :func:`import_spconv` adds a filter to that one logger that drops exactly that message.
"""
from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

from chorus_ros.core.errors import BackendUnavailableError

__all__ = ["apply", "import_spconv", "is_applied"]

_MODULES = ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash")
_FLAG = "_chorus_cpu_stream_patch"


def is_applied() -> bool:
    """True when both patches are installed."""
    mod = sys.modules.get("spconv.pytorch.cppcore")
    ops = sys.modules.get("spconv.pytorch.ops")
    return (mod is not None and ops is not None
            and getattr(getattr(mod, "get_current_stream", None), _FLAG, False)
            and getattr(ops.SpconvOps.scatter_add_cpu, _FLAG, False))


def _patch_scatter_add() -> bool:
    ops = importlib.import_module("spconv.pytorch.ops")
    cls = ops.SpconvOps
    original = cls.scatter_add_cpu
    if getattr(original, _FLAG, False):
        return False

    def scatter_add_cpu(out, inp, inds) -> None:
        """``out[inds[i]] += inp[i]`` for i < len(inds) (tv tensors on the CPU), race-free."""
        try:
            o = torch.from_numpy(out.numpy_view())
            src = torch.from_numpy(inp.numpy_view())
            idx = torch.from_numpy(inds.numpy_view()).to(torch.int64)
        except (TypeError, ValueError, RuntimeError):  # e.g. bfloat16: no numpy view
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # also sets the OpenMP thread count used by the kernel
            try:
                return original(out, inp, inds)
            finally:
                torch.set_num_threads(threads)
        o.index_add_(0, idx, src[: idx.shape[0]])
        return None

    setattr(scatter_add_cpu, _FLAG, True)
    scatter_add_cpu.__wrapped__ = original  # type: ignore[attr-defined]
    cls.scatter_add_cpu = staticmethod(scatter_add_cpu)
    return True


def apply() -> bool:
    """Install both patches; returns True if anything was installed now, False if all already were."""
    changed = _patch_scatter_add()
    cppcore = importlib.import_module("spconv.pytorch.cppcore")
    original = cppcore.get_current_stream
    if getattr(original, _FLAG, False):
        return changed

    def get_current_stream() -> int:
        """CUDA stream handle for spconv kernels; 0 (null stream) without CUDA."""
        if not torch.cuda.is_available():
            return 0
        return original()

    setattr(get_current_stream, _FLAG, True)
    get_current_stream.__wrapped__ = original  # type: ignore[attr-defined]
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - layout of another spconv version
            continue
        if getattr(mod, "get_current_stream", None) is original:
            mod.get_current_stream = get_current_stream
    return True


_FX_LOGGER = "torch.fx._symbolic_trace"
_FX_NOTICE = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export"


class _DropFxTracingNotice(logging.Filter):
    """Drops torch.fx's is_fx_tracing deprecation notice (fix 3 in the module docstring), only it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_FX_NOTICE)


def silence_fx_tracing_notice() -> None:
    """Install :class:`_DropFxTracingNotice` on torch.fx's logger (idempotent)."""
    log = logging.getLogger(_FX_LOGGER)
    if not any(isinstance(f, _DropFxTracingNotice) for f in log.filters):
        log.addFilter(_DropFxTracingNotice())


def import_spconv() -> ModuleType:
    """``spconv.pytorch`` with the CPU patch applied; BackendUnavailableError if missing."""
    try:
        spconv = importlib.import_module("spconv.pytorch")
    except ImportError as e:  # pragma: no cover - spconv is a pinned dependency
        raise BackendUnavailableError(f"the Chorus encoder needs spconv (pip install spconv): {e}") from e
    apply()
    silence_fx_tracing_notice()
    return spconv
