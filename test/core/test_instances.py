"""Instance grouping and persistent id association on hand-built scenes with exact answers."""
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from chorus_ros.core.decode.instances import (InstanceConfig, InstanceDecoder, _absorb_fragments,
                                              connected_components, feature_bucket, group_components,
                                              median_knn_distance, split_stuff_from_things, support_area)
from chorus_ros.core.errors import InvalidInputError

VS = 0.1
CFG = InstanceConfig(voxel_size=VS, feature_threshold=0.7, min_gaussians=3, spatial_margin=0.05)
FLOOR, CHAIR, TABLE = 0, 1, 2
E = torch.eye(4)


def block(x0, y0, z0, nx, ny, nz, feat, label):
    """One Gaussian per voxel centre of an nx*ny*nz block of voxels starting at voxel (x0,y0,z0)."""
    pts = torch.tensor([(x0 + i + 0.5, y0 + j + 0.5, z0 + k + 0.5)
                        for i in range(nx) for j in range(ny) for k in range(nz)]) * VS
    feat = torch.zeros(4) if feat is None else feat
    return pts, feat.expand(len(pts), -1).clone(), torch.full((len(pts),), label)


def scene():
    parts = {
        "floor": block(0, 0, 0, 10, 10, 1, None, FLOOR),
        "a": block(1, 1, 1, 2, 2, 2, E[0], CHAIR),
        "b": block(3, 1, 1, 2, 2, 2, E[1], CHAIR),      # touches a, different object feature
        "c": block(7, 7, 1, 2, 2, 2, E[0], TABLE),      # same feature as a, other class, far
        "sliver": block(1, 3, 1, 2, 1, 1, None, CHAIR),  # 2 Gaussians next to a (and b), cos 0.6/0
        "stray": block(8, 1, 5, 1, 2, 1, E[2], CHAIR),   # 2 isolated Gaussians
    }
    # floor: varied features (stuff is grouped by connectivity alone)
    n_floor = len(parts["floor"][0])
    parts["floor"] = (parts["floor"][0], torch.randn(n_floor, 4, generator=torch.Generator().manual_seed(0)),
                      parts["floor"][2])
    parts["sliver"] = (parts["sliver"][0], torch.tensor([[0.6, 0, 0.8, 0]] * 2), parts["sliver"][2])
    names = list(parts)
    means = torch.cat([parts[k][0] for k in names])
    feats = torch.cat([parts[k][1] for k in names])
    labels = torch.cat([parts[k][2] for k in names])
    which = torch.cat([torch.full((len(parts[k][0]),), i) for i, k in enumerate(names)])
    return means, feats, labels, which, names


def groups_of(comp, which, names):
    """name -> set of component ids its Gaussians got."""
    return {n: set(comp[which == i].tolist()) for i, n in enumerate(names)}


def test_grouping_exact_partition():
    means, feats, labels, which, names = scene()
    g = group_components(means, feats, labels, CFG, stuff_label_ids=[FLOOR])
    got = groups_of(g.component, which, names)
    assert g.num_components == 4
    for n in ("floor", "a", "b", "c"):
        assert len(got[n]) == 1
    assert len({next(iter(got[n])) for n in ("floor", "a", "b", "c")}) == 4
    assert got["sliver"] == got["a"]          # tiny, merged into its most similar large neighbour (0.6 > 0)
    assert got["stray"] == {-1}               # tiny and isolated: no instance


def test_touching_same_class_objects_sharing_voxels_stay_apart():
    # two chairs whose Gaussians interleave inside the same coarse voxels (voxel 0.3 > gap)
    a = block(0, 0, 0, 3, 3, 3, E[0], CHAIR)
    b = block(3, 0, 0, 3, 3, 3, E[1], CHAIR)
    means = torch.cat([a[0], b[0]])
    cfg = InstanceConfig(voxel_size=0.25, feature_threshold=0.7, min_gaussians=3)
    g = group_components(means, torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]]), cfg)
    ca, cb = set(g.component[:27].tolist()), set(g.component[27:].tolist())
    assert len(ca) == 1 and len(cb) == 1 and ca != cb
    g0 = group_components(means, torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]]),
                          InstanceConfig(voxel_size=0.25, feature_threshold=0.7, min_gaussians=3, feature_buckets=0))
    # without buckets the shared voxels mix the two chairs: chair a ends up split between components
    assert len(set(g0.component[:27].tolist())) == 2


def test_unlabeled_and_invalid_are_not_grouped():
    means, feats, labels, which, names = scene()
    labels = labels.clone()
    labels[which == 1] = 65535
    valid = which != 2
    g = group_components(means, feats, labels, CFG, [FLOOR], valid=valid)
    assert set(g.component[which == 1].tolist()) == {-1}
    assert set(g.component[which == 2].tolist()) == {-1}


def _reference_partition(means, feats, labels, cfg, stuff):
    """Slow reference: nodes by dict, all-pairs adjacency, BFS (no tiny-component handling)."""
    vox = np.floor(means.double().numpy() / cfg.voxel_size).astype(int)
    f = torch.nn.functional.normalize(feats, dim=-1)
    bucket = feature_bucket(f, cfg.feature_buckets).tolist()
    nodes = {}
    for i, (v, l) in enumerate(zip(map(tuple, vox), labels.tolist())):
        nodes.setdefault((v, l, 0 if l in stuff else bucket[i]), []).append(i)
    keys = list(nodes)
    nf = [torch.nn.functional.normalize(f[nodes[k]].sum(0), dim=0) for k in keys]
    adj = {k: [] for k in range(len(keys))}
    for a, b in itertools.combinations(range(len(keys)), 2):
        (va, la, _), (vb, lb, _) = keys[a], keys[b]
        if la != lb or max(abs(x - y) for x, y in zip(va, vb)) > 1:
            continue
        sim = float(nf[a] @ nf[b])
        if la in stuff or sim > cfg.feature_threshold:                    # stuff: connectivity alone
            adj[a].append(b)
            adj[b].append(a)
    comp = [-1] * len(keys)
    c = 0
    for s in range(len(keys)):
        if comp[s] >= 0:
            continue
        stack = [s]
        comp[s] = c
        while stack:
            u = stack.pop()
            for w in adj[u]:
                if comp[w] < 0:
                    comp[w] = c
                    stack.append(w)
        c += 1
    out = np.zeros(len(means), int)
    for k, idx in zip(keys, nodes.values()):
        out[idx] = comp[keys.index(k)]
    return out


def _same_partition(a, b):
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("seed,bits", [(0, 0), (1, 3), (2, 2), (3, 1)])
def test_grouping_matches_slow_reference(seed, bits):
    gen = torch.Generator().manual_seed(seed)
    n = 300
    means = torch.rand(n, 3, generator=gen) * 0.6 - 0.3
    labels = torch.randint(0, 3, (n,), generator=gen)
    protos = torch.randn(3, 8, generator=gen)
    feats = protos[torch.randint(0, 3, (n,), generator=gen)] + 0.3 * torch.randn(n, 8, generator=gen)
    cfg = InstanceConfig(voxel_size=0.1, feature_threshold=0.6, min_gaussians=1, feature_buckets=bits, min_support_area=0,
                         stuff_feature_threshold=-1.0)     # the graph alone (split_stuff_from_things has its own)
    g = group_components(means, feats, labels, cfg, stuff_label_ids=[0])
    ref = _reference_partition(means, feats, labels, cfg, {0})
    assert _same_partition(g.component.numpy(), ref)


def test_connected_components_vs_bfs():
    gen = torch.Generator().manual_seed(3)
    m = 200
    src = torch.randint(0, m, (150,), generator=gen)
    dst = torch.randint(0, m, (150,), generator=gen)
    root = connected_components(m, src, dst)
    adj = {i: set() for i in range(m)}
    for a, b in zip(src.tolist(), dst.tolist()):
        adj[a].add(b)
        adj[b].add(a)
    for s in range(m):
        seen, stack = {s}, [s]
        while stack:
            for w in adj[stack.pop()]:
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        assert root[s] == min(seen)


# ------------------------------------------------------------------------------- codebook
def run(dec, means, feats, labels, prev, gids, region=None, touched=()):
    return dec.regroup(means, feats, labels, prev, region=region, touched_ids=touched,
                       stuff_label_ids=[FLOOR], lang_feats=feats, gaussian_ids=gids)


def test_ids_stable_as_map_grows_and_new_object_gets_new_id():
    means, feats, labels, which, names = scene()
    gids = torch.arange(len(means)) + 1000
    dec = InstanceDecoder(CFG)
    r0 = run(dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), gids)
    ids0 = r0.instance_ids
    first = {n: set(ids0[which == i].tolist()) for i, n in enumerate(names)}
    # ids 1..4 in order of the smallest Gaussian id: floor, a, b, c
    assert first["floor"] == {1} and first["a"] == {2} and first["b"] == {3} and first["c"] == {4}
    assert first["stray"] == {0} and first["sliver"] == {2}
    # grow: more Gaussians on object a (one voxel layer on top) + a new table far away
    ga, fa, la = block(1, 1, 3, 2, 2, 1, E[0], CHAIR)
    gd, fd, ld = block(6, 2, 1, 2, 2, 2, E[3], TABLE)
    means2 = torch.cat([means, ga, gd])
    feats2 = torch.cat([feats, fa, fd])
    labels2 = torch.cat([labels, la, ld])
    gids2 = torch.cat([gids, torch.arange(len(ga) + len(gd)) + 5000])
    prev2 = torch.cat([ids0, torch.zeros(len(ga) + len(gd), dtype=torch.long)])
    new = torch.zeros(len(means2), dtype=torch.bool)
    new[len(means):] = True
    full_dec = InstanceDecoder(CFG)
    run(full_dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), gids)
    r_inc = run(dec, means2, feats2, labels2, prev2, gids2, region=new)
    r_full = run(full_dec, means2, feats2, labels2, prev2, gids2)
    for r in (r_inc, r_full):
        ids = r.instance_ids
        assert torch.equal(ids[: len(means)], ids0)                   # old Gaussians keep their ids
        assert set(ids[len(means): len(means) + len(ga)].tolist()) == {2}   # growth joins object a
        assert set(ids[len(means) + len(ga):].tolist()) == {5}        # the new table: a new id
    # the incremental call only regrouped a's Gaussians, the new ones and what touches them (floor)
    assert not r_inc.region[: len(means)][which == 3].any()                      # object c untouched
    recs = {r.instance_id: r for r in dec.records(["floor", "chair", "table"])}
    assert sorted(recs) == [1, 2, 3, 4, 5]
    assert recs[2].gaussian_count == 8 + 2 + 4 and recs[5].label == "table"
    np.testing.assert_allclose(recs[5].bbox_min, [0.65, 0.25, 0.15], atol=1e-6)
    np.testing.assert_allclose(recs[5].bbox_max, [0.75, 0.35, 0.25], atol=1e-6)
    np.testing.assert_allclose(recs[5].centroid, [0.7, 0.3, 0.2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(recs[5].embedding), 1.0, atol=1e-6)


def test_removed_object_is_retired_then_revived_by_prototype_and_ids_not_reused():
    means, feats, labels, which, names = scene()
    gids = torch.arange(len(means)) + 1000
    dec = InstanceDecoder(CFG)
    ids0 = run(dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), gids).instance_ids
    # remove object b (id 3)
    keep = which != 2
    r1 = run(dec, means[keep], feats[keep], labels[keep], ids0[keep], gids[keep],
             region=torch.zeros(int(keep.sum()), dtype=torch.bool), touched=[3])
    assert r1.retired == [3]
    assert 3 not in dec.codebook.active_ids()
    assert torch.equal(r1.instance_ids, ids0[keep])
    # b comes back with *new* Gaussian ids at the same place -> revived as 3 by prototype + box
    gb, fb, lb = block(3, 1, 1, 2, 2, 2, E[1], CHAIR)
    m2 = torch.cat([means[keep], gb])
    r2 = run(dec, m2, torch.cat([feats[keep], fb]), torch.cat([labels[keep], lb]),
             torch.cat([r1.instance_ids, torch.zeros(len(gb), dtype=torch.long)]),
             torch.cat([gids[keep], torch.arange(len(gb)) + 9000]),
             region=torch.cat([torch.zeros(int(keep.sum()), dtype=torch.bool), torch.ones(len(gb), dtype=torch.bool)]))
    assert set(r2.instance_ids[-len(gb):].tolist()) == {3}
    # a different object of another class at b's place is NOT given id 3, nor any old id
    dec2 = InstanceDecoder(CFG)
    ids0b = run(dec2, means, feats, labels, torch.zeros(len(means), dtype=torch.long), gids).instance_ids
    run(dec2, means[keep], feats[keep], labels[keep], ids0b[keep], gids[keep],
        region=torch.zeros(int(keep.sum()), dtype=torch.bool), touched=[3])
    r3 = run(dec2, m2, torch.cat([feats[keep], fb]), torch.cat([labels[keep], torch.full_like(lb, TABLE)]),
             torch.cat([ids0b[keep], torch.zeros(len(gb), dtype=torch.long)]),
             torch.cat([gids[keep], torch.arange(len(gb)) + 9000]),
             region=torch.cat([torch.zeros(int(keep.sum()), dtype=torch.bool), torch.ones(len(gb), dtype=torch.bool)]))
    assert set(r3.instance_ids[-len(gb):].tolist()) == {5}


def test_merge_keeps_first_id_and_split_revives_retired():
    # two chairs a (8 G) and b (8 G) with different features; then b's features become a's: merge
    means, feats, labels, which, names = scene()
    gids = torch.arange(len(means))
    dec = InstanceDecoder(CFG)
    ids0 = run(dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), gids).instance_ids
    f2 = feats.clone()
    f2[which == 2] = E[0]
    r = run(dec, means, f2, labels, ids0, gids, region=which == 2)
    merged = set(r.instance_ids[(which == 1) | (which == 2)].tolist())
    assert merged == {2}                                    # equal overlap: tie -> first (a)
    assert 3 in r.retired
    # split again: b gets a brand-new id (3 is retired, 2 stays with a)
    r2 = run(dec, means, feats, labels, r.instance_ids, gids, region=which == 2)
    assert set(r2.instance_ids[which == 1].tolist()) == {2}
    b_ids = set(r2.instance_ids[which == 2].tolist())
    assert b_ids == {3}  # revived by prototype + box (same feature/place as retired b), not a new id


def test_id_tracker_state_roundtrip():
    means, feats, labels, which, names = scene()
    dec = InstanceDecoder(CFG)
    run(dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), torch.arange(len(means)))
    t, meta = dec.tracker.state_dict()
    other = InstanceDecoder(CFG)
    other.tracker.load_state_dict(t, meta)
    a = dec.records(["floor", "chair", "table"])
    b = other.records(["floor", "chair", "table"])
    assert [r.instance_id for r in a] == [r.instance_id for r in b]
    assert other.tracker.next_id == dec.tracker.next_id == 5
    assert dec.codebook is dec.tracker                      # the former name still answers
    np.testing.assert_allclose(a[1].centroid, b[1].centroid)


def test_validation():
    with pytest.raises(InvalidInputError, match="auto_voxel"):
        InstanceDecoder(InstanceConfig(auto_voxel_factor=0))
    with pytest.raises(InvalidInputError, match="voxel_size"):
        group_components(torch.zeros(3, 3), torch.zeros(3, 4), torch.zeros(3), InstanceConfig(voxel_size=0))


def test_automatic_voxel_size_is_frozen_at_first_regroup():
    means, feats, labels, which, names = scene()
    dec = InstanceDecoder(InstanceConfig(voxel_size=0, auto_voxel_factor=1.5, min_gaussians=3, spacing=-1))
    scales = torch.full((len(means), 3), 0.02)
    scales[:, 0] = 0.08                                      # largest std 0.08 -> voxel 0.12
    r = dec.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long), stuff_label_ids=[FLOOR],
                    scales=scales)
    assert dec.voxel_size == pytest.approx(0.12) and dec.spacing is None
    assert len(set(r.instance_ids.tolist()) - {0}) == 4
    dec.regroup(means, feats, labels, r.instance_ids, stuff_label_ids=[FLOOR], scales=scales * 10)
    assert dec.voxel_size == pytest.approx(0.12)
    # with the spacing measured (the default): the scene is a 0.1 m lattice, so the 8th nearest
    # neighbour is a face diagonal away (sqrt(2) x 0.1) and bounds the voxel from below
    auto = InstanceDecoder(InstanceConfig(voxel_size=0, auto_voxel_factor=1.5, min_gaussians=3))
    auto.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long), stuff_label_ids=[FLOOR],
                 scales=scales)
    assert auto.spacing == pytest.approx(0.1 * 2 ** 0.5, rel=1e-5)
    assert auto.voxel_size == pytest.approx(auto.spacing)
    auto.regroup(means * 3, feats, labels, torch.zeros(len(means), dtype=torch.long), stuff_label_ids=[FLOOR],
                 scales=scales)
    assert auto.spacing == pytest.approx(0.1 * 2 ** 0.5, rel=1e-5)        # frozen too
    # a first regrouping of too few Gaussians to measure the spacing freezes neither
    few = InstanceDecoder(InstanceConfig(voxel_size=0, auto_voxel_factor=1.5, min_gaussians=1))
    few.regroup(means[:5], feats[:5], labels[:5], torch.zeros(5, dtype=torch.long), scales=scales[:5])
    assert few.spacing is None and few.voxel_size is None
    few.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long), scales=scales)
    assert few.spacing == pytest.approx(auto.spacing) and few.voxel_size == pytest.approx(auto.voxel_size)
    with pytest.raises(InvalidInputError):
        group_components(torch.zeros(3, 3), torch.zeros(2, 4), torch.zeros(3), CFG)


# ------------------------------------------------------------------ support, fragments, stuff, records
def test_min_support_area_is_density_independent():
    # a chair of 2x2x2 voxels (0.08 m^2 of voxel faces... 8 voxels x 0.01 m^2) and a 1-voxel speck;
    # the same scene with 8 Gaussians per voxel (8x denser) gives the same objects
    a = block(1, 1, 1, 2, 2, 2, E[0], CHAIR)
    speck = block(6, 6, 6, 1, 1, 1, E[1], CHAIR)
    means, feats, labels = (torch.cat([a[i], speck[i]]) for i in range(3))
    cfg = InstanceConfig(voxel_size=VS, min_gaussians=1, min_support_area=0.03, feature_buckets=0)
    g = group_components(means, feats, labels, cfg)
    assert g.num_components == 1 and int(g.component[-1]) == -1
    jitter = torch.tensor([(dx, dy, dz) for dx in (-0.02, 0.02) for dy in (-0.02, 0.02) for dz in (-0.02, 0.02)])
    dense = (means[:, None] + jitter[None]).reshape(-1, 3)
    gd = group_components(dense, feats.repeat_interleave(8, 0), labels.repeat_interleave(8, 0), cfg)
    assert gd.num_components == 1 and set(gd.component[-8:].tolist()) == {-1}
    assert set(gd.component[:-8].tolist()) == {0}
    # by count alone the dense speck (8 Gaussians) would survive
    g_count = group_components(dense, feats.repeat_interleave(8, 0), labels.repeat_interleave(8, 0),
                               InstanceConfig(voxel_size=VS, min_gaussians=8, feature_buckets=0, min_support_area=0))
    assert g_count.num_components == 2


def test_fragment_of_another_class_merges_into_the_touching_object():
    # a chair with a 2-Gaussian patch mislabelled 'table' on its side: the patch joins the chair
    chair = block(1, 1, 1, 3, 3, 2, E[0], CHAIR)
    patch = block(4, 1, 1, 1, 2, 1, torch.tensor([0.9, 0.1, 0, 0]), TABLE)
    far = block(8, 8, 1, 1, 1, 1, E[0], TABLE)                              # isolated: no instance
    means, feats, labels = (torch.cat([chair[i], patch[i], far[i]]) for i in range(3))
    cfg = InstanceConfig(voxel_size=VS, min_gaussians=3, feature_buckets=0)
    g = group_components(means, feats, labels, cfg)
    assert g.num_components == 1
    assert set(g.component[:20].tolist()) == {0}
    assert int(g.component[-1]) == -1
    g_off = group_components(means, feats, labels, InstanceConfig(voxel_size=VS, min_gaussians=3, feature_buckets=0,
                                                                  merge_across_classes=False))
    assert set(g_off.component[18:20].tolist()) == {-1}
    # the merged object's class is the majority's
    dec = InstanceDecoder(cfg)
    dec.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long))
    recs = dec.records(["floor", "chair", "table"])
    assert len(recs) == 1 and recs[0].label == "chair" and recs[0].gaussian_count == 20


def test_a_rug_labelled_floor_joins_the_rug_it_shares_an_identity_with():
    # a 4x4 rug whose right half the semantic head called floor: that half has the rug's identity (E[1]),
    # the floor its own (E[3]); a second rug-identity patch labelled floor touches no rug
    floor = block(0, 0, 0, 10, 8, 1, E[3], FLOOR)
    rug_edge = block(2, 2, 0, 2, 4, 1, E[1], CHAIR)                         # 'rug' stands in as a thing class
    rug_mid = block(4, 2, 0, 2, 4, 1, E[1], FLOOR)
    lone = block(8, 5, 0, 2, 2, 1, E[1], FLOOR)                            # rug identity, labelled floor, no rug
    floor = _carve(floor, rug_edge, rug_mid, lone)
    means, feats, labels = (torch.cat([floor[i], rug_edge[i], rug_mid[i], lone[i]]) for i in range(3))
    nf, ne, nm = len(floor[0]), len(rug_edge[0]), len(rug_mid[0])
    by_conn = group_components(means, feats, labels, InstanceConfig(voxel_size=VS, min_gaussians=3), [FLOOR]).component
    assert set(by_conn[nf + ne:nf + ne + nm].tolist()) == {int(by_conn[0])}          # half in the floor
    split = group_components(means, feats, labels, InstanceConfig(voxel_size=VS, min_gaussians=3,
                                                                  stuff_feature_threshold=0.5), [FLOOR]).component
    assert split.unique().numel() == 2
    assert set(split[nf:nf + ne + nm].tolist()) == {int(split[nf])} != {int(split[0])}  # the whole rug
    assert set(split[nf + ne + nm:].tolist()) == {int(split[0])}    # the lone patch resembles no thing: stays


def test_records_carry_code_id_and_support_confidence():
    means, feats, labels, which, names = scene()
    dec = InstanceDecoder(CFG)
    run(dec, means, feats, labels, torch.zeros(len(means), dtype=torch.long), torch.arange(len(means)))
    recs = dec.records(["floor", "chair", "table"])
    assert all(r.code_id == -1 for r in recs)
    protos = torch.stack([E[1], E[0], E[3] + 0.01 * E[2]])
    dec.set_code_prototypes(protos * 3)                                      # any norm
    recs = {r.instance_id: r for r in dec.records(["floor", "chair", "table"])}
    assert recs[2].code_id == 1 and recs[3].code_id == 0 and recs[4].code_id == 1   # a, b, c
    # confidence: the floor (100 Gaussians) is surer than chair b (8 Gaussians)
    assert 0 < recs[3].confidence < recs[1].confidence <= 1
    with pytest.raises(InvalidInputError):
        dec.set_code_prototypes(torch.zeros(3))
    dec.set_code_prototypes(torch.randn(3, E.shape[1] + 1))                  # another head's width
    with pytest.raises(InvalidInputError, match="5-d but the objects' features are 4-d"):
        dec.records(["floor", "chair", "table"])


@pytest.mark.parametrize("cfg", [
    InstanceConfig(voxel_size=VS, feature_threshold=0.7, min_gaussians=3, spatial_margin=0.05),
    InstanceConfig(voxel_size=VS, feature_threshold=0.7, min_gaussians=3, spatial_margin=0.05,
                   min_support_area=0.03, stuff_feature_threshold=0.2)])
def test_identity_features_of_a_grown_map_partition_like_the_whole_map(cfg):
    # identity features from a fixed per-object vector + noise; the map arrives in four deltas
    gen = torch.Generator().manual_seed(5)
    parts = [block(0, 0, 0, 12, 12, 1, E[3], FLOOR), block(1, 1, 1, 3, 3, 3, E[0], CHAIR),
             block(4, 1, 1, 3, 3, 3, E[1], CHAIR), block(8, 8, 1, 2, 3, 2, E[2], TABLE),
             block(4, 5, 1, 1, 1, 1, E[0], TABLE)]                          # a mislabelled speck by chair b
    means = torch.cat([p[0] for p in parts])
    feats = torch.cat([p[1] for p in parts]) + 0.15 * torch.randn(len(means), 4, generator=gen)
    labels = torch.cat([p[2] for p in parts])
    gids = torch.arange(len(means))
    order = torch.randperm(len(means), generator=gen)
    chunks = torch.tensor_split(order, 4)
    dec = InstanceDecoder(cfg)
    ids = torch.zeros(0, dtype=torch.long)
    have = torch.zeros(0, dtype=torch.long)
    for ch in chunks:                               # deltas: append Gaussians, regroup only the new region
        have = torch.cat([have, ch])
        prev = torch.cat([ids, torch.zeros(len(ch), dtype=torch.long)])
        new = torch.zeros(len(have), dtype=torch.bool)
        new[-len(ch):] = True
        r = dec.regroup(means[have], feats[have], labels[have], prev, region=new, stuff_label_ids=[FLOOR],
                        gaussian_ids=gids[have])
        ids = r.instance_ids
    grown = torch.zeros(len(means), dtype=torch.long)
    grown[have] = ids
    whole = InstanceDecoder(cfg).regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long),
                                         stuff_label_ids=[FLOOR], gaussian_ids=gids).instance_ids
    assert _same_partition(grown.numpy(), whole.numpy())
    assert len(set(whole.tolist()) - {0}) == 4


def test_class_agnostic_things_keep_an_object_with_noisy_labels_whole():
    # a 4x4x2 object whose Gaussians are labelled chair/table in a checkerboard (label noise),
    # next to a second object with another identity feature and clean labels
    a = block(1, 1, 1, 4, 4, 2, E[0], CHAIR)
    noisy = a[2].clone()
    noisy[::2] = TABLE
    b = block(5, 1, 1, 3, 3, 2, E[1], TABLE)
    floor = block(0, 0, 0, 10, 10, 1, E[3], FLOOR)
    means, feats = torch.cat([a[0], b[0], floor[0]]), torch.cat([a[1], b[1], floor[1]])
    labels = torch.cat([noisy, b[2], floor[2]])
    kw = dict(voxel_size=VS, min_gaussians=3, feature_buckets=0, merge_across_classes=False)
    per_class = group_components(means, feats, labels, InstanceConfig(**kw), [FLOOR])
    agn = group_components(means, feats, labels, InstanceConfig(class_agnostic_things=True, **kw), [FLOOR])
    na = len(a[0])
    assert len(set(per_class.component[:na].tolist())) == 2           # shattered by its labels
    assert len(set(agn.component[:na].tolist())) == 1                  # whole
    assert set(agn.component[na:na + len(b[0])].tolist()).isdisjoint(agn.component[:na].tolist())
    assert agn.num_components == 3                                      # a, b, floor
    dec = InstanceDecoder(InstanceConfig(class_agnostic_things=True, **kw))
    dec.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long), stuff_label_ids=[FLOOR])
    recs = dec.records(["floor", "chair", "table"])
    assert sorted(r.gaussian_count for r in recs) == [18, 32, 100]
    assert {r.gaussian_count: r.label for r in recs}[32] in ("chair", "table")


# ------------------------------------------------------------- spacing, support area, fragment absorption
def grid(nx, ny, h, z=0.0, x0=0.0, y0=0.0):
    """``[nx*ny, 3]`` a flat square lattice of spacing ``h`` at height ``z``."""
    x, y = torch.meshgrid(torch.arange(nx) * h + x0, torch.arange(ny) * h + y0, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), torch.full((nx * ny,), z)], 1).double().float()


def test_median_knn_distance_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 3, generator=gen)
    d = torch.cdist(pts.double(), pts.double())
    ref = float(d.sort(1).values[:, 8].median())            # column 0 is the point itself
    assert median_knn_distance(pts, 8) == pytest.approx(ref, rel=1e-5)
    # sampled queries (N > max_queries) are still exact on a lattice: 4 neighbours at h, 4 at sqrt(2) h
    assert median_knn_distance(grid(60, 60, 0.03), 8, max_queries=256) == pytest.approx(0.03 * 2 ** 0.5, rel=1e-4)
    with pytest.raises(InvalidInputError):
        median_knn_distance(pts[:5], 8)
    # far from the origin (a SLAM world frame) the centimetre spacing survives float32
    far = grid(60, 60, 0.03) + torch.tensor([300.0, -200.0, 10.0])
    assert median_knn_distance(far, 8, max_queries=256) == pytest.approx(0.03 * 2 ** 0.5, rel=1e-3)


def test_a_map_of_duplicates_freezes_no_spacing():
    """Mostly duplicated points measure spacing 0: nothing is frozen (a frozen 0 would make the
    saved map unloadable), and a later map with real spacing is measured."""
    from chorus_ros.core.decode.instances import InstanceConfig, InstanceDecoder
    dec = InstanceDecoder(InstanceConfig())
    dup = torch.rand(50, 3).repeat(10, 1)
    assert dec.resolve_spacing(dup) is None and dec.spacing is None
    assert dec.resolve_spacing(grid(30, 30, 0.05)) == pytest.approx(0.05 * 2 ** 0.5, rel=1e-4)


def test_support_area_with_spacing_is_density_independent_and_weighted_by_confidence():
    # one 0.4 m x 0.4 m patch sampled at 2 cm and at 4 cm: the same area; half confidence halves it
    areas = []
    for h in (0.02, 0.04):
        m = grid(int(round(0.4 / h)), int(round(0.4 / h)), h)
        sp = median_knn_distance(m, 8)
        cfg = InstanceConfig(voxel_size=0.05, spacing=sp)
        comp = group_components(m, torch.ones(len(m), 2), torch.zeros(len(m), dtype=torch.long), cfg, [0])
        node = torch.arange(len(m))
        areas.append(float(support_area(comp.component, 1, node, node, cfg)[0]))
        half = float(support_area(comp.component, 1, node, node, cfg, torch.full((len(m),), 0.5))[0])
        assert half == pytest.approx(areas[-1] / 2)
    assert areas[0] == pytest.approx(areas[1], rel=1e-5)
    # a lattice has pi/4 of the k-NN estimate's area per sample (pi * 2h^2 / 8 against h^2)
    assert areas[0] == pytest.approx(0.16 * math.pi / 4, rel=1e-5)


def test_a_surface_sampled_coarser_than_its_gaussians_stays_one_object():
    # real/mesh maps: small Gaussians (std 1 cm) on a 5 cm lattice. A voxel from the Gaussians' size
    # alone (1.5 cm) is finer than the spacing: every Gaussian is its own fragment. With the spacing
    # as the voxel's lower bound the floor is one object.
    m = grid(30, 30, 0.05)
    feats = torch.randn(len(m), 4, generator=torch.Generator().manual_seed(1))
    labels = torch.full((len(m),), FLOOR)
    scales = torch.full((len(m), 3), 0.01)
    zero = torch.zeros(len(m), dtype=torch.long)
    old = InstanceDecoder(InstanceConfig(spacing=-1)).regroup(m, feats, labels, zero, stuff_label_ids=[FLOOR],
                                                              scales=scales)
    assert set(old.instance_ids.tolist()) == {0}                  # all fragments, nothing to join
    dec = InstanceDecoder(InstanceConfig())
    new = dec.regroup(m, feats, labels, zero, stuff_label_ids=[FLOOR], scales=scales)
    assert dec.voxel_size == pytest.approx(0.05 * 2 ** 0.5, rel=1e-4)
    assert len(set(new.instance_ids.tolist())) == 1 and int(new.instance_ids[0]) > 0


def test_class_flip_fragments_join_the_object_they_touch_most():
    # a wall (stuff) with a 'door' patch (class flip, 4 Gaussians) in its top corner, touching a real
    # cabinet at one corner: the patch touches the wall most, so it joins the wall; a 'table' speck
    # above the wall touches only the door patch (a chain of fragments) and follows it into the wall
    WALL, DOOR, CAB, TAB = 0, 1, 2, 3
    wall = block(0, 0, 0, 8, 1, 6, E[3], WALL)
    cab = block(8, 0, 0, 3, 2, 4, E[0], CAB)
    door = block(6, 0, 4, 2, 1, 2, E[1], DOOR)
    tab = block(8, 0, 6, 1, 1, 1, E[2], TAB)
    keep = ~((wall[0][:, None] - door[0][None]).abs().sum(-1) < 1e-6).any(1)
    means = torch.cat([wall[0][keep], cab[0], door[0], tab[0]])
    feats = torch.cat([wall[1][keep], cab[1], door[1], tab[1]])
    labels = torch.cat([wall[2][keep], cab[2], door[2], tab[2]])
    nw, nc, nd = int(keep.sum()), len(cab[0]), len(door[0])
    cfg = InstanceConfig(voxel_size=VS, min_gaussians=5, feature_buckets=0)
    g = group_components(means, feats, labels, cfg, [WALL]).component
    assert set(g[nw + nc:].tolist()) == set(g[:nw].tolist()) and len(set(g[:nw].tolist())) == 1
    assert set(g[nw:nw + nc].tolist()).isdisjoint(g[:nw].tolist())
    # the older one-step rule looks only at supported neighbours: the chained speck is dropped
    old = group_components(means, feats, labels, replace(cfg, absorb_by_contact=False), [WALL]).component
    assert int(old[-1]) == -1


def _absorb_reference(target, tiny, ca, cb, sim, comp_lab, across):
    """Slow reference of the rounds of fragment absorption (python loops)."""
    target = target.tolist()
    pairs = [(int(a), int(b), float(s)) for a, b, s in zip(ca, cb, sim) if a != b]
    pairs += [(b, a, s) for a, b, s in pairs]
    while True:
        cand = {}
        for a, b, s in pairs:
            if tiny[a] and target[a] < 0 and target[b] >= 0:
                t = target[b]
                same = int(comp_lab[a]) == int(comp_lab[t])
                if not across and not same:
                    continue
                c = cand.setdefault(a, {}).setdefault(t, [0, -2.0, same])
                c[0] += 1
                c[1] = max(c[1], s)
        if not cand:
            return target
        for a, ts in cand.items():
            def key(t):
                n, s, same = ts[t]
                return (same, s if same else n, n if same else s, -t)
            target[a] = max(ts, key=key)


@pytest.mark.parametrize("seed,across", [(0, True), (1, True), (2, False), (3, True)])
def test_absorb_fragments_matches_slow_reference(seed, across):
    gen = torch.Generator().manual_seed(seed)
    ncomp, npairs = 40, 120
    ca = torch.randint(0, ncomp, (npairs,), generator=gen)
    cb = torch.randint(0, ncomp, (npairs,), generator=gen)
    sim = torch.round(torch.rand(npairs, generator=gen) * 4) / 4            # ties happen
    comp_lab = torch.randint(0, 3, (ncomp,), generator=gen)
    tiny = torch.rand(ncomp, generator=gen) < 0.6
    target = torch.where(tiny, torch.full((ncomp,), -1), torch.arange(ncomp))
    ref = _absorb_reference(target.clone(), tiny.tolist(), ca.tolist(), cb.tolist(), sim.tolist(), comp_lab, across)
    _absorb_fragments(target, tiny, ca, cb, sim, comp_lab, across)
    assert target.tolist() == ref


# ------------------------------------------------------------------ stuff split from the things touching it
def _carve(base, *holes):
    """``base`` block without the Gaussians at the positions of the ``holes`` blocks."""
    gone = torch.cat([h[0] for h in holes])
    keep = ~((base[0][:, None] - gone[None]).abs().sum(-1) < 1e-6).any(1)
    return tuple(x[keep] for x in base)


def test_wall_labelled_half_of_a_picture_joins_the_picture_not_the_wall():
    # a wall (identity E[3]) with a 3x3 picture on it whose left column the semantic head called
    # 'wall'; the picture's identity features (E[1]) are the same over the whole picture
    WALL, PIC = 0, 1
    pic = block(3, 0, 2, 2, 1, 3, E[1], PIC)
    pic_as_wall = block(2, 0, 2, 1, 1, 3, E[1], WALL)
    wall = _carve(block(0, 0, 0, 8, 1, 6, E[3], WALL), pic, pic_as_wall)
    means, feats, labels = (torch.cat([wall[i], pic_as_wall[i], pic[i]]) for i in range(3))
    nw, nh = len(wall[0]), len(pic_as_wall[0])
    cfg = InstanceConfig(voxel_size=VS, min_gaussians=2, feature_buckets=0, stuff_feature_threshold=0.7)
    g = group_components(means, feats, labels, cfg, [WALL]).component
    assert g.unique().numel() == 2
    assert set(g[nw:].tolist()) == {int(g[-1])}                        # the whole picture: one object
    assert int(g[-1]) not in set(g[:nw].tolist())                      # the wall stays whole, apart
    dec = InstanceDecoder(cfg)
    dec.regroup(means, feats, labels, torch.zeros(len(means), dtype=torch.long), stuff_label_ids=[WALL])
    pics = [r for r in dec.records(["wall", "picture"]) if r.label == "picture"]
    assert len(pics) == 1 and pics[0].gaussian_count == 3 * nh           # class: its members' majority
    # connectivity alone (the default) keeps the wall-labelled column in the wall
    off = group_components(means, feats, labels, replace(cfg, stuff_feature_threshold=-1.0), [WALL]).component
    assert set(off[nw:nw + nh].tolist()) == set(off[:nw].tolist())


def test_a_floor_is_never_absorbed_into_a_thing_and_a_floor_fragment_on_it_joins_the_floor():
    # the fragment rule only moves components under the minimum support: a supported floor touching a
    # chair stays apart; a floor-labelled speck touching only the chair is a class flip on the chair
    # and joins it (the intended rule, InstanceConfig.merge_across_classes)
    chair = block(2, 2, 1, 2, 2, 3, E[0], CHAIR)
    floor = _carve(block(0, 0, 0, 8, 8, 1, E[3], FLOOR), block(2, 2, 0, 2, 2, 1, None, FLOOR))
    speck = block(2, 2, 4, 1, 1, 1, E[0], FLOOR)                         # on the chair's top, off the floor
    # a floor-labelled column beside the chair, of neither's identity: split from the floor by feature
    # (stuff_feature_threshold 0.7), it touches the chair more (16 node contacts) than the floor (7)
    col = block(4, 2, 1, 1, 1, 4, E[2], FLOOR)
    means, feats, labels = (torch.cat([floor[i], chair[i], speck[i], col[i]]) for i in range(3))
    nf, nc = len(floor[0]), len(chair[0])
    for thr in (-1.0, 0.7):
        cfg = InstanceConfig(voxel_size=VS, min_gaussians=5, min_support_area=0, feature_buckets=0,
                             stuff_feature_threshold=thr)
        g = group_components(means, feats, labels, cfg, [FLOOR]).component
        f_id, c_id = int(g[0]), int(g[nf])
        assert set(g[:nf].tolist()) == {f_id} and set(g[nf:nf + nc].tolist()) == {c_id} and f_id != c_id
        assert int(g[nf + nc]) == c_id                                  # isolated speck -> chair
        assert set(g[nf + nc + 1:].tolist()) == {f_id}                 # column: fragment -> floor (own class first)
    # the same contacts (floor 0: 7, chair 1: 16) decide by class first, else by contacts
    for col_class, joins in ((0, 0), (2, 1)):
        target = torch.tensor([0, 1, -1])
        _absorb_fragments(target, torch.tensor([False, False, True]), torch.tensor([2] * 23),
                          torch.tensor([0] * 7 + [1] * 16), torch.zeros(23), torch.tensor([0, 1, col_class]), True)
        assert target.tolist() == [0, 1, joins]


def _split_stuff_reference(node_comp, node_stuff, node_feat, node_count, src, dst, thr, join):
    """Slow reference of :func:`split_stuff_from_things` (python loops, BFS over split nodes)."""
    m = len(node_comp)
    comps = sorted(set(node_comp))
    proto = {}
    for c in comps:
        v = sum(node_feat[i] * node_count[i] for i in range(m) if node_comp[i] == c)
        proto[c] = v / v.norm()
    out = [bool(node_stuff[i]) and float(node_feat[i] @ proto[node_comp[i]]) < thr for i in range(m)]
    nb = {i: set() for i in range(m)}
    for a, b in zip(src, dst):
        nb[a].add(b)
        nb[b].add(a)
    result = list(node_comp)
    seen = set()
    for s0 in range(m):
        if not out[s0] or s0 in seen:
            continue
        piece, stack = [s0], [s0]
        seen.add(s0)
        while stack:
            u = stack.pop()
            for w in nb[u]:
                if out[w] and w not in seen and node_comp[w] == node_comp[s0]:
                    seen.add(w)
                    piece.append(w)
                    stack.append(w)
        v = sum(node_feat[i] * node_count[i] for i in piece)
        pp = v / v.norm()
        own = float(pp @ proto[node_comp[s0]])
        things = sorted({node_comp[w] for u in piece for w in nb[u] if not node_stuff[w]})
        best = None
        for t in things:
            st = float(pp @ proto[t])
            if st > join and st > own and (best is None or st > best[0]):
                best = (st, t)
        if best is not None:
            for i in piece:
                result[i] = best[1]
    return result


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_stuff_from_things_matches_slow_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    m, npairs, ncomp = 60, 200, 12
    node_comp = torch.randint(0, ncomp, (m,), generator=gen)
    comp_stuff = torch.arange(ncomp) < 4
    node_stuff = comp_stuff[node_comp]
    protos = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen), dim=-1)
    node_feat = torch.nn.functional.normalize(protos[torch.randint(0, 5, (m,), generator=gen)]
                                              + 0.2 * torch.randn(m, 4, generator=gen), dim=-1)
    node_count = torch.randint(1, 5, (m,), generator=gen)
    src = torch.randint(0, m, (npairs,), generator=gen)
    dst = torch.randint(0, m, (npairs,), generator=gen)
    got = split_stuff_from_things(node_comp, node_stuff, node_feat, node_count, src, dst, 0.6, 0.3)
    ref = _split_stuff_reference(node_comp.tolist(), node_stuff.tolist(), node_feat.double(), node_count.double(),
                                 src.tolist(), dst.tolist(), 0.6, 0.3)
    assert got.tolist() == ref
    assert got.tolist() != node_comp.tolist()                                # the rule fired
