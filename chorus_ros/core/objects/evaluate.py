"""How well GOCL's unsupervised masks and codes match ground-truth objects (held-out views only).

* **FG-ARI**: adjusted Rand index of the slot partition (argmax of the masks) against the
  ground-truth instances, over patches that belong to an instance (the usual slot-attention score).
* **mBO**: mean best overlap - for every ground-truth instance (>= ``min_patches`` patches), the
  best IoU with any slot mask, averaged.
* **code purity**: how scene-agnostic the codes are - for each code, the share of its patches (over
  every view of every scene) whose ground-truth class is the code's most common class; averaged
  weighted by patches. A codebook that means "chair" in one room and "wall" in another scores low.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from chorus_ros.core.objects.scores import adjusted_rand_index

__all__ = ["evaluate_gocl"]


@torch.no_grad()
def evaluate_gocl(model, batches, *, min_patches: int = 4, seed: int = 0) -> dict:
    """Scores of ``model`` (a GOCL) on ``batches`` (:class:`~chorus_ros.core.train.stages.gocl.ViewBatch`)."""
    model.eval()
    aris, bos = [], []
    code_class: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    used = []
    for b in batches:
        out = model(b.feats, generator=torch.Generator().manual_seed(seed))
        slot = out.masks.argmax(1)                                    # [V, h, w]
        code = torch.gather(out.codes.code, 1, slot.reshape(slot.shape[0], -1)).reshape(slot.shape)
        for v in range(b.feats.shape[0]):
            inst, lab = b.instances[v], b.labels[v]
            fg = (inst >= 0) & (inst != 65535)
            if int(fg.sum()) >= 2:
                aris.append(adjusted_rand_index(inst, slot[v], ignore=~fg))
            used.append(int(torch.unique(slot[v]).numel()))
            for i in torch.unique(inst[fg]).tolist():
                m = inst == i
                if int(m.sum()) < min_patches:
                    continue
                best = 0.0
                for s in torch.unique(slot[v][m]).tolist():
                    ms = slot[v] == s
                    best = max(best, float((m & ms).sum()) / float((m | ms).sum()))
                bos.append(best)
            ok = lab != 65535
            for c, l in zip(code[v][ok].tolist(), lab[ok].tolist()):
                code_class[c][l] += 1
    tot = sum(sum(d.values()) for d in code_class.values())
    purity = sum(max(d.values()) for d in code_class.values()) / max(tot, 1)
    return {"fg_ari": float(np.mean(aris)) if aris else float("nan"),
            "mbo": float(np.mean(bos)) if bos else float("nan"),
            "code_purity": float(purity), "codes_used": len(code_class),
            "slots_used_per_view": float(np.mean(used)) if used else 0.0, "views": len(used)}
