"""GaussianMap: exact semantics of add/update/remove/upsert, swap-remove consistency against a
slow dict-of-rows reference, version, dirty blocks, capacity and bad-input atomicity, SH degree
handling, attributes, save/load."""
import math
import random

import numpy as np
import pytest
import torch

from chorus_ros.core.errors import CheckpointError, InvalidInputError, MapCapacityError, UnknownIdError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.map import DeltaResult, GaussianMap, IdIndex, MapConfig, UnknownAttributeError


def make(ids, degree=0, *, base=0.0, extras=None) -> GaussianArrays:
    """Gaussians whose every parameter is derived from its id (exact, easy to check)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    n, k = len(ids), (degree + 1) ** 2
    f = ids.to(torch.float32)[:, None] + base
    return GaussianArrays(
        means=f.repeat(1, 3) * torch.tensor([1.0, -1.0, 0.5]),
        sh=(f[:, :, None] + torch.arange(k * 3, dtype=torch.float32).reshape(1, k, 3)),
        opacities=f[:, 0] * 0.1, log_scales=-f.repeat(1, 3), quats=torch.cat([f, f + 1, f + 2, f + 3], 1),
        ids=ids, extras=dict(extras or {}))


def snapshot(m: GaussianMap) -> dict:
    """Everything observable, as plain Python: id -> (params..., attributes...)."""
    a = m.arrays()
    out = {}
    for s, i in enumerate(a.ids.tolist()):
        row = [a.means[s].tolist(), a.sh[s].tolist(), a.opacities[s].item(), a.log_scales[s].tolist(),
               a.quats[s].tolist()]
        row += [(k, a.extras[k][s].tolist()) for k in sorted(a.extras)]
        out[i] = row
    return {"rows": out, "n": len(m), "version": m.version, "attrs": m.attribute_names()}


def cfg(**kw) -> MapConfig:
    base = dict(capacity=1000, sh_degree=0, block_size=1.0, initial_capacity=4)
    base.update(kw)
    return MapConfig(**base)


# ------------------------------------------------------------------------------ basics


def test_add_update_remove_exact():
    m = GaussianMap(cfg())
    assert len(m) == 0 and m.version == 0 and m.sh_degree == 0 and m.device == torch.device("cpu")
    m.add(make([10, 20, 30]))
    assert len(m) == 3 and m.version == 1
    a = m.arrays()
    assert a.ids.tolist() == [10, 20, 30]
    assert a.means[1].tolist() == [20.0, -20.0, 10.0] and a.quats[2].tolist() == [30, 31, 32, 33]
    assert m.slots_of(torch.tensor([30, 10])).tolist() == [2, 0]
    assert m.contains(torch.tensor([20, 21])).tolist() == [True, False]
    m.update(make([20], base=100.0))
    assert m.version == 2 and m.arrays().opacities.tolist() == pytest.approx([1.0, 12.0, 3.0])
    assert m.remove(torch.tensor([10])) == 1 and m.version == 3
    # swap-remove: the last Gaussian (30) moved into slot 0
    assert m.arrays().ids.tolist() == [30, 20]
    assert m.slots_of(torch.tensor([30, 20])).tolist() == [0, 1]
    assert m.arrays().means[0].tolist() == [30.0, -30.0, 15.0]
    g = m.gather(torch.tensor([20]))
    assert g.ids.tolist() == [20] and g.opacities.tolist() == pytest.approx([12.0])


def test_upsert_semantics_and_delta_result():
    m = GaussianMap(cfg())
    m.add(make([1, 2, 3, 4], extras={"cls": torch.tensor([1, 2, 3, 4])}))
    # remove 2 and 4, update 1, add 5, and 3 is removed AND re-added (a new Gaussian: attrs reset)
    r = m.apply_delta(make([1, 5, 3], base=0.5), torch.tensor([2, 4, 3]))
    assert r == DeltaResult(added=2, updated=1, removed=3, version=2)
    s = snapshot(m)["rows"]
    assert sorted(s) == [1, 3, 5]
    assert s[1][2] == pytest.approx(0.15) and s[1][5] == ("cls", 1)   # updated, attribute kept
    assert s[3][5] == ("cls", 0) and s[5][5] == ("cls", 0)           # new rows get zeros
    # update with extras overwrites only the given attribute
    m.update(make([5], extras={"cls": torch.tensor([9])}))
    assert m.attribute("cls")[m.slots_of(torch.tensor([5]))].tolist() == [9]
    r = m.apply_delta(None, torch.tensor([99, 1]), missing="ignore")
    assert (r.added, r.updated, r.removed) == (0, 0, 1)
    r = m.apply_delta(make([7]), None)
    assert (r.added, r.updated, r.removed, r.version) == (1, 0, 0, m.version)


def test_sh_degree_truncated_and_padded():
    m = GaussianMap(cfg(sh_degree=1))
    m.add(make([1], degree=3))
    m.add(make([2], degree=0))
    sh = m.arrays().sh
    assert sh.shape == (2, 4, 3)
    assert sh[0].flatten().tolist() == [1.0 + i for i in range(12)]
    assert sh[1].flatten().tolist() == [2.0, 3.0, 4.0] + [0.0] * 9


def test_growth_keeps_data():
    m = GaussianMap(cfg(initial_capacity=1))
    for i in range(37):
        m.add(make([i], extras={"a": torch.tensor([[i, -i]])}))
    a = m.arrays()
    assert a.ids.tolist() == list(range(37))
    assert a.extras["a"][:, 1].tolist() == [-i for i in range(37)]
    assert a.means[:, 0].tolist() == [float(i) for i in range(37)]


# ----------------------------------------------------------------- reference model comparison


class RefMap:
    """Slow reference: dict id -> row of params and attributes."""

    def __init__(self):
        self.rows: dict[int, dict] = {}
        self.attrs: dict[str, tuple] = {}  # name -> (trailing shape, dtype)

    def _row(self, g, j, old=None):
        row = {"means": g.means[j].clone(), "sh": g.sh[j].clone(), "opacities": g.opacities[j].clone(),
               "log_scales": g.log_scales[j].clone(), "quats": g.quats[j].clone()}
        for name, (shape, dt) in self.attrs.items():
            row[name] = old[name] if old is not None else torch.zeros(shape, dtype=dt)
        for name, v in g.extras.items():
            row[name] = v[j].clone()
        return row

    def _reg(self, g):
        for name, v in g.extras.items():
            if name not in self.attrs:
                self.attrs[name] = (tuple(v.shape[1:]), v.dtype)
                for r in self.rows.values():
                    r[name] = torch.zeros(v.shape[1:], dtype=v.dtype)

    def upsert(self, g, rm):
        for i in rm:
            self.rows.pop(i, None)
        self._reg(g)
        for j, i in enumerate(g.ids.tolist()):
            self.rows[i] = self._row(g, j, self.rows.get(i))


def check_equal(m: GaussianMap, ref: RefMap):
    a = m.arrays()
    assert len(m) == len(ref.rows)
    assert sorted(a.ids.tolist()) == sorted(ref.rows)
    assert sorted(m.attribute_names()) == sorted(ref.attrs)
    ids = list(ref.rows)
    if not ids:
        return
    slots = m.slots_of(torch.tensor(ids))
    assert a.ids[slots].tolist() == ids   # id -> slot -> id is the identity
    for f in ("means", "sh", "opacities", "log_scales", "quats", *ref.attrs):
        exp = torch.stack([ref.rows[i][f] for i in ids])
        got = (a.extras[f][slots] if f in ref.attrs else getattr(a, f)[slots]).cpu()
        assert torch.equal(got, exp), f


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_random_ops_match_reference_model(device):
    rnd = random.Random(1)
    m = GaussianMap(cfg(initial_capacity=2, capacity=10_000, device=device))
    ref = RefMap()
    next_id = [0]
    version = 0

    def fresh(k):
        out = list(range(next_id[0], next_id[0] + k))
        next_id[0] += k
        return out

    def batch(ids, extras_p=0.5):
        g = make(ids, base=rnd.random())
        g.means += torch.randn(len(ids), 3)
        if rnd.random() < extras_p:
            g.extras["feat"] = torch.randn(len(ids), 4)
        if rnd.random() < 0.3:
            g.extras["inst"] = torch.randint(0, 100, (len(ids),), dtype=torch.int32)
        return g

    for step in range(200):
        op = rnd.choice(["add", "update", "remove", "delta", "delta", "attr"])
        have = list(ref.rows)
        if op == "add":
            g = batch(fresh(rnd.randint(1, 12)))
            m.add(g)
            ref.upsert(g, [])
        elif op == "update" and have:
            g = batch(rnd.sample(have, rnd.randint(1, min(8, len(have)))))
            m.update(g)
            ref.upsert(g, [])
        elif op == "remove" and have:
            rm = rnd.sample(have, rnd.randint(1, min(10, len(have))))
            assert m.remove(torch.tensor(rm + [10**6]), missing="ignore") == len(rm)
            ref.upsert(make([]), rm)
        elif op == "delta":
            rm = rnd.sample(have, rnd.randint(0, min(6, len(have))))
            keep = [i for i in have if i not in rm]
            up = rnd.sample(keep, rnd.randint(0, min(4, len(keep)))) + fresh(rnd.randint(0, 6))
            up += rnd.sample(rm, rnd.randint(0, len(rm)))  # removed and re-added
            g = batch(up)
            res = m.apply_delta(g, torch.tensor(rm, dtype=torch.int64))
            assert res.removed == len(rm) and res.added + res.updated == len(up)
            ref.upsert(g, rm)
        elif op == "attr" and have and "feat" in ref.attrs:
            sel = rnd.sample(have, rnd.randint(1, min(5, len(have))))
            vals = torch.randn(len(sel), 4)
            m.set_attribute("feat", vals, m.slots_of(torch.tensor(sel)))
            for i, v in zip(sel, vals):
                ref.rows[i]["feat"] = v.clone()
            version -= 1  # attributes do not bump the version
        else:
            continue
        version += 1
        assert m.version == version
        check_equal(m, ref)
    assert len(m) > 20  # the sequence really exercised a populated map


# --------------------------------------------------------------------------- versions / dirty


def test_dirty_blocks_include_old_and_new_positions():
    m = GaussianMap(cfg(block_size=2.0))
    g = make([1, 2])
    g.means[:] = torch.tensor([[0.5, 0.5, 0.5], [-0.1, 3.9, 4.0]])
    m.add(g)
    d = m.take_dirty()
    assert d.blocks.tolist() == [[-1, 1, 2], [0, 0, 0]]
    assert (d.from_version, d.to_version, d.full, d.block_size) == (0, 1, False, 2.0)
    assert m.take_dirty().empty
    u = make([1])
    u.means[:] = torch.tensor([[5.0, -0.5, 0.0]])
    m.update(u)                                        # moved: old (0,0,0) and new (2,-1,0)
    m.remove(torch.tensor([2]))                        # removed: old (-1,1,2)
    d = m.take_dirty()
    assert d.blocks.tolist() == [[-1, 1, 2], [0, 0, 0], [2, -1, 0]]
    assert (d.from_version, d.to_version, d.full) == (1, 3, False)
    # apply_delta: removal of id 1 marks its block; the new Gaussian marks its own
    n = make([7])
    n.means[:] = torch.tensor([[-3.0, -3.0, -3.0]])
    m.apply_delta(n, torch.tensor([1]))
    assert m.take_dirty().blocks.tolist() == [[-2, -2, -2], [2, -1, 0]]
    m.set_attribute("x", torch.zeros(1))
    assert m.take_dirty().empty
    m.replace_all(make([1, 2, 3]))
    d = m.take_dirty()
    assert d.full and d.blocks.shape == (0, 3) and (d.from_version, d.to_version) == (4, 5)
    m.clear()
    assert m.take_dirty().full and len(m) == 0
    assert m.block_of(torch.tensor([[-0.1, 0.0, 1.99], [2.0, -2.0, 7.5]])).tolist() == [[-1, 0, 0], [1, -1, 3]]


def test_dirty_tracking_compacts_without_losing_blocks():
    m = GaussianMap(cfg(capacity=200_000, initial_capacity=1024))
    g = make(list(range(70_000)))
    g.means[:] = 0.25
    g.means[-1] = torch.tensor([9.5, 9.5, 9.5])
    for s in range(0, 70_000, 10_000):
        m.add(g.index(slice(s, s + 10_000)))
    assert m.take_dirty().blocks.tolist() == [[0, 0, 0], [9, 9, 9]]


# ---------------------------------------------------------------------- capacity / bad input


def test_capacity_error_changes_nothing():
    m = GaussianMap(cfg(capacity=5))
    m.add(make([1, 2, 3, 4]))
    m.take_dirty()
    before = snapshot(m)
    with pytest.raises(MapCapacityError, match="would make the map hold 6 Gaussians, above its capacity 5"):
        m.add(make([5, 6]))
    with pytest.raises(MapCapacityError):
        m.apply_delta(make([5, 6, 7]), torch.tensor([1]))
    with pytest.raises(MapCapacityError):
        m.replace_all(make(list(range(6))))
    assert snapshot(m) == before and m.take_dirty().empty
    r = m.apply_delta(make([5, 6]), torch.tensor([1]))   # fits thanks to the removal
    assert len(m) == 5 and r.added == 2


def _bad_cases():
    nan_means = make([50])
    nan_means.means[0, 1] = math.nan
    inf_op = make([50, 51])
    inf_op.opacities[:] = math.inf
    no_ids = make([50])
    no_ids.ids = None
    return [
        ("add", lambda m: m.add(nan_means), InvalidInputError, r"non-finite values .*'means': 1"),
        ("add", lambda m: m.add(inf_op), InvalidInputError, r"'opacities': 2.*sanitise first"),
        ("add", lambda m: m.add(make([50, 51, 50])), InvalidInputError, r"duplicated ids within one call: \[50\]"),
        ("add", lambda m: m.add(make([1, 50])), InvalidInputError, r"already in the map .*\[1\]"),
        ("add", lambda m: m.add(no_ids), InvalidInputError, "ids is required"),
        ("add", lambda m: m.add(make([2**32])), InvalidInputError, r"\[0, 2\^32-1\]"),
        ("add", lambda m: m.add(make([50], extras={"cls": torch.zeros(1, 2)})), InvalidInputError,
         r"extras\['cls'\] has per-Gaussian shape \(2,\)"),
        ("add", lambda m: m.add(make([50], extras={"cls": torch.zeros(1)})), InvalidInputError,
         "cannot be cast"),
        ("update", lambda m: m.update(make([1, 77, 78])), UnknownIdError, r"2 ids not in the map: \[77, 78\]"),
        ("update", lambda m: m.update(nan_means.__class__(**{**nan_means.__dict__, "ids": torch.tensor([1])})),
         InvalidInputError, "non-finite"),
        ("remove", lambda m: m.remove(torch.tensor([1, 99])), UnknownIdError, r"ids not in the map: \[99\]"),
        ("remove", lambda m: m.remove(torch.tensor([1, 1])), InvalidInputError, "duplicated ids"),
        ("remove", lambda m: m.remove(torch.tensor([1.0])), InvalidInputError, "integer dtype"),
        ("remove", lambda m: m.remove(torch.tensor([1]), missing="skip"), InvalidInputError, "missing must be"),
        ("delta", lambda m: m.apply_delta(make([9]), torch.tensor([99])), UnknownIdError, "not in the map"),
        ("delta", lambda m: m.apply_delta(inf_op, torch.tensor([1])), InvalidInputError, "non-finite"),
        ("replace", lambda m: m.replace_all(make([4, 4])), InvalidInputError, "duplicated ids"),
        ("attr", lambda m: m.set_attribute("cls", torch.zeros(2)), InvalidInputError, "2 rows, the map holds 3"),
        ("attr", lambda m: m.set_attribute("cls", torch.zeros(1), torch.tensor([3])), InvalidInputError,
         r"slots must be in \[0, 3\)"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[3][:30])
def test_bad_input_leaves_map_and_version_untouched(case):
    _, fn, exc, pattern = case
    m = GaussianMap(cfg())
    m.add(make([1, 2, 3], extras={"cls": torch.tensor([1, 2, 3], dtype=torch.int32)}))
    m.take_dirty()
    before = snapshot(m)
    with pytest.raises(exc, match=pattern):
        fn(m)
    assert snapshot(m) == before
    assert m.take_dirty().empty


def test_bad_config():
    with pytest.raises(InvalidInputError, match="sh_degree must be 0..3"):
        GaussianMap(MapConfig(sh_degree=4))
    with pytest.raises(InvalidInputError, match="block_size"):
        GaussianMap(MapConfig(block_size=0.0))


# ------------------------------------------------------------------------------ attributes


def test_attributes():
    m = GaussianMap(cfg())
    m.add(make([1, 2, 3]))
    m.set_attribute("score", torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    m.set_attribute("inst", torch.tensor([7], dtype=torch.int32), torch.tensor([1]))  # created, others 0
    assert m.attribute("inst").tolist() == [0, 7, 0] and m.attribute_names() == ["inst", "score"]
    m.remove(torch.tensor([1]))           # id 3 moves to slot 0 with its attributes
    assert m.attribute("score").tolist() == [[5.0, 6.0], [3.0, 4.0]]
    assert m.attribute("inst").tolist() == [0, 7]
    with pytest.raises(UnknownAttributeError, match=r"unknown map attribute 'nope'; known: \['inst', 'score'\]"):
        m.attribute("nope")
    with pytest.raises(KeyError):
        m.drop_attribute("nope")
    m.drop_attribute("inst")
    assert m.attribute_names() == ["score"] and "inst" not in m.arrays().extras
    v = m.version
    m.set_attribute("score", torch.zeros(2, 2))
    assert m.version == v


# ------------------------------------------------------------------------------ persistence


def test_save_load_round_trip(tmp_path):
    m = GaussianMap(cfg(sh_degree=1, block_size=0.5))
    m.add(make([5, 6, 7, 8], degree=1, extras={"feat": torch.randn(4, 3), "cls": torch.tensor([1, 2, 3, 4]),
                                               "ok": torch.tensor([True, False, True, True])}))
    m.remove(torch.tensor([6]))
    p = tmp_path / "m.safetensors"
    m.save(str(p))
    m2 = GaussianMap.load(str(p))
    assert snapshot(m2) == snapshot(m) and m2.version == m.version == 2
    assert m2.config == m.config
    for k in ("feat", "cls", "ok"):
        assert m2.attribute(k).dtype == m.attribute(k).dtype
    d = m2.take_dirty()
    assert d.full and d.to_version == 2
    m2.add(make([9], degree=1))               # loaded map is fully functional
    assert m2.slots_of(torch.tensor([9])).tolist() == [3]
    # a different config: SH truncated, capacity enforced
    m3 = GaussianMap.load(str(p), cfg(sh_degree=0))
    assert m3.arrays().sh.shape == (3, 1, 3) and torch.equal(m3.arrays().sh[:, 0], m.arrays().sh[:, 0])
    with pytest.raises(MapCapacityError):
        GaussianMap.load(str(p), cfg(capacity=2))
    # empty map
    e = GaussianMap(cfg())
    e.save(str(tmp_path / "e.safetensors"))
    assert len(GaussianMap.load(str(tmp_path / "e.safetensors"))) == 0


def test_load_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="does not exist"):
        GaussianMap.load(str(tmp_path / "missing.safetensors"))
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="no 'chorus_map' metadata"):
        GaussianMap.load(str(tmp_path / "x.safetensors"))
    m = GaussianMap(cfg())
    m.add(make([1]))
    m.save(str(tmp_path / "m.safetensors"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    t.pop("quats")
    t["extra"] = torch.zeros(1)
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"missing tensors \['quats'\], unexpected tensors \['extra'\]"):
        GaussianMap.load(str(tmp_path / "bad.safetensors"))


# ------------------------------------------------------------------------------ id index


@pytest.mark.parametrize("sparse", [False, True])
def test_id_index_matches_a_dict(sparse):
    """The vectorised hash index against a Python dict over random insert/delete/set batches
    (forcing rehashes from a tiny start and tombstone reuse)."""
    rng = np.random.default_rng(3 + sparse)
    t, d = IdIndex(), {}
    hi = 2**32 if sparse else 400
    for step in range(300):
        op = rng.integers(0, 3)
        if op == 0:
            cand = np.unique(rng.integers(0, hi, size=rng.integers(0, 60)))
            cand = cand[[c not in d for c in cand.tolist()]].astype(np.int64)
            rng.shuffle(cand)
            sl = rng.integers(0, 10**6, size=cand.size)
            assert t.insert(cand, sl)
            d.update(zip(cand.tolist(), sl.tolist()))
        elif d:
            ks = rng.choice(np.array(list(d), dtype=np.int64), size=min(len(d), int(rng.integers(1, 40))),
                            replace=False)
            if op == 1:
                t.delete(ks)
                for k in ks.tolist():
                    del d[k]
            else:
                sl = rng.integers(0, 10**6, size=ks.size)
                t.set(ks, sl)
                d.update(zip(ks.tolist(), sl.tolist()))
        q = np.array(list(d) + rng.integers(0, hi, size=20).tolist(), dtype=np.int64)
        assert t.lookup(q).tolist() == [d.get(i, -1) for i in q.tolist()]
        assert len(t) == len(d)


def test_id_index_build_detects_duplicates():
    assert IdIndex.build(np.array([5, 7, 5], dtype=np.int64)) is None
    assert IdIndex.build(np.array([2**32 - 1, 0, 2**32 - 1], dtype=np.int64)) is None
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 40, size=int(rng.integers(1, 30))).astype(np.int64)
        built = IdIndex.build(a)
        assert (built is None) == (np.unique(a).size != a.size)
        if built is not None:
            assert built.lookup(a).tolist() == list(range(a.size))
