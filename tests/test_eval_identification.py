"""Identification in the evaluator: each probe counted once across overlapping subsets (AR's
"sunglasses" = "sunglasses_s1" + "sunglasses_s2"), and pairwise methods (PDSN) identified with the
probe's FDM applied to the gallery too, checked against a brute-force computation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from methods_helpers import CONFIGS

from occsynth_train.config import load_config
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.eval.evaluate import _flip, _identification, _images, _masks, evaluate_benchmark
from occsynth_train.eval.metrics import rank1, rank1_rotate
from occsynth_train.methods import create_method

CPU = torch.device("cpu")


def _protocol(ident_dir) -> dict:
    return json.loads((ident_dir / "protocol.json").read_text())


def _one_hot_embeddings(ds: KeyedDataset, protocol: dict, wrong: set) -> np.ndarray:
    """One-hot identity embeddings; the probes in `wrong` point at the next identity (a miss)."""
    names = sorted(set(protocol["identity"].values()))
    emb = np.zeros((len(ds), len(names)))
    for key, pos in ds.position.items():
        i = names.index(protocol["identity"][key])
        emb[pos, (i + 1) % len(names) if key in wrong else i] = 1.0
    return emb


def test_aggregate_rank1_counts_a_probe_listed_by_several_subsets_once(tiny_ident):
    ds, protocol = KeyedDataset(tiny_ident), _protocol(tiny_ident)
    probes = protocol["probes"]["occluded"][:6]
    emb = _one_hot_embeddings(ds, protocol, wrong={probes[2], probes[4], probes[5]})  # hits: 1 1 0 1 0 0
    protocol["probes"] = {"all": probes, "s1": probes[:3], "s2": probes[3:], "again": probes[:2]}
    out = _identification(protocol, ds, emb)
    assert [out[k]["rank1"] for k in ("all", "s1", "s2", "again")] == pytest.approx([1 / 2, 2 / 3, 1 / 3, 1.0])
    assert out["rank1"] == pytest.approx(3 / 6) and out["aggregate"]["probes"] == 6
    # the probe-weighted mean of the subsets, (3 + 2 + 1 + 2) / 14, would count probes 0 and 1 thrice
    assert out["rank1"] != pytest.approx(8 / 14)
    assert out["missing_keys"] == 0


def test_rotate_aggregate_counts_each_test_once(tiny_ident):
    ds, protocol = KeyedDataset(tiny_ident), _protocol(tiny_ident)
    ident = protocol["identity"]
    by_id: dict[str, list] = {}
    for key in protocol["probes"]["occluded"]:
        by_id.setdefault(ident[key], []).append(key)
    a, b = sorted(by_id)[:2]
    keys = by_id[a] + by_id[b]  # 4 + 4 images of two identities
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(len(ds), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    protocol.update(info={"gallery_mode": "rotate"}, probes={"all": keys, "first": by_id[a]})
    out = _identification(protocol, ds, emb)
    rows = lambda ks: emb[[ds.position[k] for k in ks]]  # noqa: E731
    d = rows(protocol["distractors"])
    alone = rank1_rotate(rows(keys), [ident[k] for k in keys], d)
    assert out["all"] == alone and out["rank1"] == alone["rank1"] and out["aggregate"]["tests"] == 24
    first = rank1_rotate(rows(by_id[a]), [a] * 4, d)
    assert out["first"] == first and first["tests"] == 12
    weighted = (alone["rank1"] * 24 + first["rank1"] * 12) / 36  # what counting a's 12 tests twice gives
    assert weighted != pytest.approx(out["rank1"])


def _pdsn(*overrides):
    cfg = load_config(
        CONFIGS / "pdsn_tiny_cpu.yaml",
        [
            "data.train=[x]",
            "method_kw.stage=finetune",
            "method_kw.occlusion_source=gt",
            "method_kw.tau=0.75",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    m = create_method("pdsn", cfg, 5).eval()
    with torch.no_grad():  # a dictionary with distinct entries (tau 0.75: each discards 3/4 of the map)
        m.dict_sum.copy_(torch.rand_like(m.dict_sum))
        m.dict_count.fill_(1)
    return m


def _brute_force(m, ds: KeyedDataset, probe_keys, cand_keys, ident) -> tuple[list, list]:
    """For every probe and candidate, the cosine of the flip-summed embeddings with the PROBE's FDM
    multiplying both top maps (the mirrored probe's FDM for the mirrored images): the nearest
    candidate's identity per probe, and the same without the FDM on the candidates."""
    size = m.input_size
    load = lambda k: ds[ds.position[k]]  # noqa: E731
    x_c = _images(torch.stack([load(k)["image"] for k in cand_keys]), size, CPU)
    with torch.no_grad():
        f_c, f_cf = (m.backbone.forward_features(x)[-1] for x in (x_c, _flip(x_c)))
        e_plain = F.normalize(
            m.backbone.forward_head(f_c) + m.backbone.forward_head(f_cf), dim=1
        )  # candidates unmasked (all gallery masks are empty here)
        with_fdm, without = [], []
        for k in probe_keys:
            s = load(k)
            x, mask = _images(s["image"][None], size, CPU), _masks(s["mask"][None], size, CPU)
            fdm, fdm_f = m.fdm(mask), m.fdm(_flip(mask))
            f, ff = m.backbone.forward_features(x)[-1], m.backbone.forward_features(_flip(x))[-1]
            e_p = F.normalize(m.backbone.forward_head(f * fdm) + m.backbone.forward_head(ff * fdm_f), dim=1)
            e_g = F.normalize(m.backbone.forward_head(f_c * fdm) + m.backbone.forward_head(f_cf * fdm_f), dim=1)
            with_fdm.append(ident[cand_keys[int((e_g @ e_p[0]).argmax())]])
            without.append(ident[cand_keys[int((e_plain @ e_p[0]).argmax())]])
    return with_fdm, without


def test_pairwise_identification_applies_each_probes_fdm_to_the_gallery(tiny_ident, tmp_path):
    bench = tmp_path / "ident"
    shutil.copytree(tiny_ident, bench)
    protocol = _protocol(bench)
    probes = protocol["probes"]["occluded"]
    protocol["probes"] = {"occluded": probes, "first_half": probes[:20]}  # overlapping, like AR's
    (bench / "protocol.json").write_text(json.dumps(protocol))
    m = _pdsn()
    report, _ = evaluate_benchmark(m, bench, CPU, 16, 0, flip=True)
    ident = report["identification"]
    assert ident["scoring"] == "pairwise"
    ds = KeyedDataset(bench)
    who = protocol["identity"]
    cands = protocol["gallery"] + protocol["distractors"]
    with_fdm, without = _brute_force(m, ds, probes, cands, who)
    truth = [who[k] for k in probes]
    expect = np.mean([a == b for a, b in zip(with_fdm, truth)])
    assert ident["occluded"]["rank1"] == pytest.approx(expect) and ident["rank1"] == pytest.approx(expect)
    assert ident["first_half"]["rank1"] == pytest.approx(np.mean([a == b for a, b in zip(with_fdm[:20], truth)]))
    assert with_fdm != without  # the probe's FDM on the gallery changes who is nearest
    # one gallery pass per distinct (FDM, mirrored FDM) pattern, fewer than the probes
    with torch.no_grad():
        codes = set()
        for k in probes:
            mask = _masks(ds[ds.position[k]]["mask"][None], m.input_size, CPU)
            codes.add((tuple(m.chosen_blocks(mask)[0].tolist()), tuple(m.chosen_blocks(_flip(mask))[0].tolist())))
    assert ident["conditions"] == len(codes) < len(probes)
    plain, _ = evaluate_benchmark(_pdsn("method_kw.pairwise_fdm=false"), bench, CPU, 16, 0, flip=True)
    assert plain["identification"]["scoring"] == "embeddings"


def test_pairwise_rotate_identification_matches_brute_force(tiny_ident, tmp_path):
    """MegaFace's rotating gallery with the probe's FDM on its gallery image and on the distractors."""
    bench = tmp_path / "rot"
    shutil.copytree(tiny_ident, bench)
    protocol = _protocol(bench)
    who = protocol["identity"]
    keys = [k for k in protocol["probes"]["occluded"] if who[k] in sorted(set(who.values()))[:3]]
    protocol.update(info={"gallery_mode": "rotate"}, probes={"probes": keys}, gallery=keys)
    (bench / "protocol.json").write_text(json.dumps(protocol))
    m = _pdsn()
    report, _ = evaluate_benchmark(m, bench, CPU, 16, 0, flip=True)
    got = report["identification"]["probes"]
    ds = KeyedDataset(bench)
    size = m.input_size
    load = lambda k: ds[ds.position[k]]  # noqa: E731
    hits = tests = 0
    with torch.no_grad():
        for p in keys:
            s = load(p)
            x, mask = _images(s["image"][None], size, CPU), _masks(s["mask"][None], size, CPU)
            cond = torch.cat([m.pair_condition(x, mask)[0], m.pair_condition(_flip(x), _flip(mask))[0]])

            def under(ks, cond=cond):
                xs = _images(torch.stack([load(k)["image"] for k in ks]), size, CPU)
                half = len(cond) // 2
                e = m.embed_conditioned(xs, cond[:half]) + m.embed_conditioned(_flip(xs), cond[half:])
                return F.normalize(e, dim=1)

            e_p = under([p])[0]
            best_d = (under(protocol["distractors"]) @ e_p).max()
            mates = [k for k in keys if who[k] == who[p] and k != p]
            hits += int(((under(mates) @ e_p) > best_d).sum())
            tests += len(mates)
    assert got["tests"] == tests and got["rank1"] == pytest.approx(hits / tests)


def test_rank1_keeps_its_counting_rules():
    gallery = np.eye(3)
    out = rank1(gallery, ["a", "b", "c"], np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]), ["a", "b", "z"])
    assert out["rank1"] == 0.5 and out["probes"] == 2 and out["probes_without_mate"] == 1
    empty = rank1(np.zeros((0, 3)), [], np.eye(3)[:1], ["a"])
    assert np.isnan(empty["rank1"]) and empty["probes_without_mate"] == 1
