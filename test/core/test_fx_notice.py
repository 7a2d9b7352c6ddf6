"""The torch.fx notice spconv triggers on every process's first encode is dropped, and nothing
else from that logger is (issue 12 hygiene)."""
import logging

import pytest
import torch

pytest.importorskip("spconv")


def _build(sp):
    return sp.SparseConvTensor(torch.zeros(1, 1), torch.zeros(1, 4, dtype=torch.int32), [4, 4, 4], 1)


def test_fx_tracing_notice_is_dropped_and_only_it():
    import torch.fx._symbolic_trace as st

    from chorus_ros.core.encoder._spconv_compat import _FX_LOGGER, _FX_NOTICE, import_spconv
    sp = import_spconv()
    log = logging.getLogger(_FX_LOGGER)
    got = []
    handler = logging.Handler()
    handler.emit = got.append
    log.addHandler(handler)
    ours = list(log.filters)
    try:
        st.is_fx_tracing_warning.cache_clear()      # torch logs it once per process
        _build(sp)
        assert got == []
        log.warning("another message")
        assert [r.getMessage() for r in got] == ["another message"]
        for f in ours:                              # control: without the filter it is logged
            log.removeFilter(f)
        got.clear()
        st.is_fx_tracing_warning.cache_clear()
        _build(sp)
        assert any(r.getMessage().startswith(_FX_NOTICE) for r in got)
    finally:
        for f in ours:
            if f not in log.filters:
                log.addFilter(f)
        log.removeHandler(handler)
