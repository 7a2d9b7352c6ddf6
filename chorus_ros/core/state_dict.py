"""Strict loading of a state dict with an error that says exactly what does not fit.

Used by every loader of weights (encoder checkpoints, the text encoder, teachers), so each
reports missing keys, unexpected keys and shape mismatches the same way (STYLE: never a bare
failure without a message).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from chorus_ros.core.errors import CheckpointError

__all__ = ["load_state_dict_strict"]

_LIST_LIMIT = 20


def _short(keys: list[str]) -> str:
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"{keys[:_LIST_LIMIT]}{more}"


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` only if keys and shapes match exactly.

    Raises:
        CheckpointError: ``"<what>: missing keys [...]; unexpected keys [...]; shape mismatches
            [...]"`` (only the parts that apply; at most 20 entries each). ``module`` is unchanged.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_short(mismatched)}")
        raise CheckpointError(f"{what}: " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)
