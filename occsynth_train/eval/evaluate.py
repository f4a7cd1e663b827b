"""`occsynth-train eval --model RUN --benchmark DIR [--out report.json]`.

A benchmark is an occsynth dataset directory with, beside its shards:
  * pairs.jsonl (verification): {"pair", "fold", "issame", "a": key, "b": key, "flagged"} per
    pair; without it, pairs are rebuilt from the samples' extra {pair, fold, side, issame};
  * protocol.json (identification, occsynth/benchmarks/protocols/identification.py): {"gallery": [keys],
    "probes": {subset: [keys]}, "distractors": [keys], "identity": {key: identity}, "info":
    {"gallery_mode": ...}}; rank-1 per probe subset against gallery + distractors, or MegaFace's
    rotating gallery when info.gallery_mode is "rotate" (metrics.rank1_rotate).
Embeddings are flip-summed: embed(x) + embed(flip(x)), then L2-normalised. Verification
reports 10-fold accuracy over the pairs' fold ids (a single-fold benchmark, e.g. LFW fold 1
alone, is split into 10 folds by pair index modulo 10, which keeps matched/mismatched
balanced), AUC and TAR@FAR=1e-3/1e-4 (metrics.py explains the convention); flagged pairs are
also reported left out ("unflagged"). Methods with a segmentation branch get mask IoU against the
benchmark's true masks. A ROC plot (PNG) is written beside the JSON report.
Methods that declare `uses_gt_masks` get the benchmark's true masks with the images (PDSN with
ground-truth occlusion), and `pairwise` methods score each verification pair with
embed_pair(a, b, masks_a, masks_b) instead of independent embeddings (PDSN's FDM of a
comparison); in identification each probe's condition (method.pair_condition: PDSN's FDM) is
applied to the gallery too (method.embed_conditioned), probes grouped by condition so that the
gallery is embedded once per distinct condition. A probe listed by several subsets (AR's
"sunglasses" and "sunglasses_s1") counts once in the aggregate rank-1.

Any model (models.py): a run directory, an .onnx file, a TorchScript archive or
package.module:factory (`evaluate_model`); a model other than a run brings its own input
conventions (`prepare_images`), and a benchmark whose images differ from its input size is
refused before any work unless it asked to resize. A benchmark is a dataset directory or an
insightface .bin pair file (insightface_bin.py: arcface_torch's folds). Directory benchmarks
also report their occluded area ("occlusion": mean occlusion ratio of all and of the occluded
samples), the x axis of the suite plot (suite.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from occsynth.errors import UsageError
from occsynth.io.atomic import atomic_write, write_text

from ..data.batch import normalize
from ..data.keyed import KeyedDataset
from ..models.losses import occlusion_probability
from .insightface_bin import BinDataset
from .metrics import MaskIoU, rank1_from_nearest, rank1_rotate_from_hits, roc_curve, rotate_tests, verification_report
from .models import LoadedModel, load_model, load_run, resolve_device, size_text

FARS = (1e-3, 1e-4)
log = logging.getLogger(__name__)
__all__ = ["Benchmark", "evaluate_benchmark", "evaluate_model", "evaluate_run", "load_run", "score_model"]


def _images(batch_images: torch.Tensor, size, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> the model's normalised input at `size`."""
    x = batch_images.to(device).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return normalize(x)


def _prepare(method, batch_images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The model's input: its own conventions (models.EmbeddingModel.prepare_images) or, for an
    occsynth_train method, [-1, 1] RGB at its input size."""
    prepare = getattr(method, "prepare_images", None)
    return prepare(batch_images, device) if prepare is not None else _images(batch_images, method.input_size, device)


def _masks(batch_masks: torch.Tensor, size, device: torch.device) -> torch.Tensor:
    """uint8 [B, 1, H, W] (1 = occluded) -> float {0, 1} at `size` (nearest, as in training)."""
    m = batch_masks.to(device).float()
    return F.interpolate(m, size=size, mode="nearest") if tuple(m.shape[-2:]) != tuple(size) else m


def _flip(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.flip(t, dims=[3])


@torch.no_grad()
def embed_dataset(
    method,
    ds: KeyedDataset,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
    iou: MaskIoU | None = None,
) -> np.ndarray:
    """L2-normalised (flip-summed) embeddings of every sample of `ds`, in ds order; updates
    `iou` with predicted vs true masks when given and the method segments."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    size = method.input_size
    out = []
    for batch in loader:
        x = _prepare(method, batch["image"], device)
        if method.uses_gt_masks:
            m = _masks(batch["mask"], size, device)
            e = method.embed(x, m).float()
            if flip:
                e = e + method.embed(_flip(x), _flip(m)).float()
        else:
            e = method.embed(x).float()
            if flip:
                e = e + method.embed(_flip(x)).float()
        out.append(F.normalize(e, dim=1).cpu())
        known = batch["mask_known"].bool()  # real occlusions have no true mask to score against
        if iou is not None and method.has_segmentation and known.any():
            logits = method.predict_mask(x[known.to(x.device)])
            true = batch["mask"][known].bool()
            prob = occlusion_probability(logits)
            if prob.shape[-2:] != true.shape[-2:]:
                prob = F.interpolate(prob, size=true.shape[-2:], mode="bilinear", align_corners=False)
            iou.update((prob > 0.5).cpu().numpy(), true.numpy())
    return torch.cat(out).numpy()


class _PairData(torch.utils.data.Dataset):
    """Both samples of each listed pair (positions into a KeyedDataset)."""

    def __init__(self, ds: KeyedDataset, a: np.ndarray, b: np.ndarray):
        self.ds, self.a, self.b = ds, a, b

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict:
        return {"a": self.ds[int(self.a[i])], "b": self.ds[int(self.b[i])]}


@torch.no_grad()
def pair_scores(
    method,
    ds: KeyedDataset,
    a: np.ndarray,
    b: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
) -> np.ndarray:
    """Cosine similarity of each pair from method.embed_pair (flip-summed like embed_dataset)."""
    loader = DataLoader(_PairData(ds, a, b), batch_size=max(1, batch_size // 2), num_workers=num_workers, shuffle=False)
    size = method.input_size
    out = []
    for batch in loader:
        xa, xb = _prepare(method, batch["a"]["image"], device), _prepare(method, batch["b"]["image"], device)
        ma = mb = None
        if method.uses_gt_masks:
            ma, mb = _masks(batch["a"]["mask"], size, device), _masks(batch["b"]["mask"], size, device)
        ea, eb = (e.float() for e in method.embed_pair(xa, xb, ma, mb))
        if flip:
            fa, fb = method.embed_pair(_flip(xa), _flip(xb), _flip(ma), _flip(mb))
            ea, eb = ea + fa.float(), eb + fb.float()
        out.append((F.normalize(ea, dim=1) * F.normalize(eb, dim=1)).sum(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def load_pairs(root: Path, ds: KeyedDataset) -> list[dict]:
    path = root / "pairs.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs: dict[int, dict] = {}
    for meta in ds.metas:
        extra = meta.get("extra") or {}
        if "pair" in extra and extra.get("side") in ("a", "b"):
            row = pairs.setdefault(int(extra["pair"]), {"pair": int(extra["pair"]), "flagged": False})
            row[extra["side"]] = meta["key"]
            row["fold"] = extra.get("fold", 0)
            if "issame" in extra:
                row["issame"] = bool(extra["issame"])
    return [pairs[p] for p in sorted(pairs)]


def _verification(pairs: list[dict], ds: KeyedDataset, emb: np.ndarray, scorer=None) -> tuple[dict, tuple]:
    """Verification report over the complete pairs; scores are embedding dot products, or
    `scorer(a_positions, b_positions)` for pairwise methods."""
    complete = [p for p in pairs if p.get("a") in ds.position and p.get("b") in ds.position and "issame" in p]
    if not complete:
        raise ValueError("no complete pairs (both keys present, issame known)")
    a = np.array([ds.position[p["a"]] for p in complete])
    b = np.array([ds.position[p["b"]] for p in complete])
    scores = scorer(a, b) if scorer is not None else np.einsum("ij,ij->i", emb[a], emb[b])
    issame = np.array([bool(p["issame"]) for p in complete])
    folds = np.array([p.get("fold", 0) for p in complete])
    flagged = np.array([bool(p.get("flagged", False)) for p in complete])
    note = None
    if len(set(folds.tolist())) < 2:
        folds = np.arange(len(complete)) % 10
        note = "single fold id: pairs split into 10 folds by pair index modulo 10"
    report = verification_report(scores, issame, folds, FARS)
    report["missing_pairs"] = len(pairs) - len(complete)
    if note:
        report["fold_note"] = note
    if flagged.any() and (~flagged).sum() > 0:
        keep = ~flagged
        report["flagged_pairs"] = int(flagged.sum())
        report["unflagged"] = verification_report(scores[keep], issame[keep], folds[keep], FARS)
    return report, (scores, issame)


CHUNK = 50_000_000  # similarity-matrix elements computed at once (rows x candidates)


def _argmax_rows(probes: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Index of each probe's most similar candidate, in row chunks of at most CHUNK similarities."""
    step = max(1, CHUNK // max(1, len(cands)))
    return np.concatenate(
        [np.argmax(probes[i : i + step] @ cands.T, axis=1) for i in range(0, len(probes), step)] or [np.zeros(0, int)]
    )


def _max_rows(probes: np.ndarray, cands: np.ndarray) -> np.ndarray:
    step = max(1, CHUNK // max(1, len(cands)))
    return np.concatenate(
        [(probes[i : i + step] @ cands.T).max(axis=1) for i in range(0, len(probes), step)] or [np.zeros(0)]
    )


def _row_dots(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """a[rows_a[i]] . b[rows_b[i]] for every i, in chunks."""
    step = max(1, CHUNK // max(1, a.shape[1]))
    return np.concatenate(
        [np.einsum("ij,ij->i", a[rows_a[i : i + step]], b[rows_b[i : i + step]]) for i in range(0, len(rows_a), step)]
        or [np.zeros(0)]
    )


def _identification(protocol: dict, ds: KeyedDataset, emb: np.ndarray, groups=None) -> dict:
    """Rank-1 per probe subset (closed set: nearest of gallery + distractors), or MegaFace's
    rotating gallery when the protocol says gallery_mode "rotate".

    Every probe is scored once, and the aggregate "rank1" is over the union of the subsets, so a
    probe listed by several subsets (AR's "sunglasses" and "sunglasses_s1") counts once (rotate:
    each (gallery, probe) test once). `groups(probe_positions, candidate_positions)` yields
    (probe indices, probe embeddings, candidate embeddings) with the candidates embedded as those
    probes need them (pairwise methods: under each distinct probe condition); by default one
    group of the per-image embeddings `emb`.
    """
    present = lambda keys: [k for k in keys if k in ds.position]  # noqa: E731
    identity = protocol.get("identity") or {}
    ident = lambda k: identity.get(k) or ds.metas[ds.position[k]]["identity"]  # noqa: E731
    positions = lambda keys: np.array([ds.position[k] for k in keys], dtype=int)  # noqa: E731
    if groups is None:
        groups = lambda p, c: [(np.arange(len(p)), emb[p], emb[c])]  # noqa: E731
    probes = protocol.get("probes", protocol.get("probe", []))
    subsets = probes if isinstance(probes, dict) else {"probe": probes}
    distractors = present(protocol.get("distractors", []))
    gallery = present(protocol.get("gallery", []))
    listed = len(protocol.get("gallery", [])) + len(protocol.get("distractors", [])) + sum(map(len, subsets.values()))
    members = {name: present(keys) for name, keys in subsets.items()}
    union = list(dict.fromkeys(k for keys in members.values() for k in keys))  # each probe once
    where = {k: i for i, k in enumerate(union)}
    index = {name: np.array([where[k] for k in keys], dtype=int) for name, keys in members.items()}
    uids = np.array([ident(k) for k in union], dtype=object)
    upos = positions(union)
    out: dict = {"gallery": len(gallery), "distractors": len(distractors)}
    rotate = (protocol.get("info") or {}).get("gallery_mode") == "rotate"
    if rotate:
        dpos = positions(distractors)
        p, g = rotate_tests(uids)
        sims, best = np.full(len(p), -np.inf), np.full(len(union), -np.inf)
        for idx, pe, ce in groups(upos, np.concatenate([upos, dpos])) if len(union) else []:
            if len(dpos):
                best[idx] = _max_rows(pe, ce[len(upos) :])
            row = np.full(len(union), -1)
            row[idx] = np.arange(len(idx))
            t = np.flatnonzero(row[p] >= 0)
            sims[t] = _row_dots(pe, ce, row[p[t]], g[t])
        hits = sims > best[p]
        counted = np.zeros(len(p), bool)
        for name, idx in index.items():
            inside = np.zeros(len(union), bool)
            inside[idx] = True
            keep = inside[p] & inside[g]
            counted |= keep
            out[name] = rank1_rotate_from_hits(hits[keep], len(set(uids[idx].tolist())), len(distractors))
        agg = rank1_rotate_from_hits(hits[counted], len(set(uids.tolist())), len(distractors))
        out["aggregate"] = {"tests": agg["tests"], "rule": "each (gallery, probe) test once, whatever subsets list it"}
    else:
        cand = gallery + distractors
        cand_ids = np.array([ident(k) for k in cand], dtype=object)
        nearest = np.full(len(union), None, dtype=object)
        if len(cand) and len(union):
            for idx, pe, ce in groups(upos, positions(cand)):
                nearest[idx] = cand_ids[_argmax_rows(pe, ce)]
        for name, idx in index.items():
            out[name] = rank1_from_nearest(nearest[idx], uids[idx], cand_ids)
        agg = rank1_from_nearest(nearest, uids, cand_ids)
        out["aggregate"] = {"probes": agg["probes"], "rule": "each probe once, whatever subsets list it"}
    out["rank1"] = agg["rank1"]
    out["gallery_mode"] = "rotate" if rotate else "closed-set"
    out["missing_keys"] = listed - len(gallery) - len(distractors) - sum(map(len, members.values()))
    return out


class _Subset(torch.utils.data.Dataset):
    def __init__(self, ds: KeyedDataset, positions: np.ndarray):
        self.ds, self.positions = ds, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        return self.ds[int(self.positions[i])]


@torch.no_grad()
def pair_conditions(method, ds, positions, device, batch_size=256, num_workers=2, flip=True) -> np.ndarray:
    """method.pair_condition of each listed sample (then of its mirror image when flip), [N, K]."""
    loader = DataLoader(_Subset(ds, positions), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    size, out = method.input_size, []
    for batch in loader:
        x = _prepare(method, batch["image"], device)
        m = _masks(batch["mask"], size, device) if method.uses_gt_masks else None
        c = method.pair_condition(x, m)
        if flip:
            c = torch.cat([c, method.pair_condition(_flip(x), _flip(m))], 1)
        out.append(c.to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.uint8)


@torch.no_grad()
def embed_conditioned(method, ds, positions, condition, device, batch_size=256, num_workers=2, flip=True):
    """L2-normalised (flip-summed) embeddings of the listed samples under one condition (a row of
    pair_conditions: the mirror image gets the condition's second half)."""
    half = len(condition) // 2 if flip else len(condition)
    cond, cond_flip = torch.as_tensor(condition[:half]), torch.as_tensor(condition[half:])
    loader = DataLoader(_Subset(ds, positions), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = []
    for batch in loader:
        x = _prepare(method, batch["image"], device)
        e = method.embed_conditioned(x, cond).float()
        if flip:
            e = e + method.embed_conditioned(_flip(x), cond_flip).float()
        out.append(F.normalize(e, dim=1).cpu())
    return torch.cat(out).numpy() if out else None


def conditioned_groups(method, ds, device, batch_size=256, num_workers=2, flip=True, stats: dict | None = None):
    """The `groups` of _identification for pairwise methods: probes grouped by their condition
    (PDSN: the FDM's blocks), the candidates embedded under each group's condition: one candidate
    pass per distinct condition. stats["conditions"] gets the number of distinct conditions."""

    def groups(probe_pos: np.ndarray, cand_pos: np.ndarray):
        codes = pair_conditions(method, ds, probe_pos, device, batch_size, num_workers, flip)
        uniq, inverse = np.unique(codes, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        if stats is not None:
            stats["conditions"] = int(len(uniq))
        for u, code in enumerate(uniq):
            idx = np.flatnonzero(inverse == u)
            pe = embed_conditioned(method, ds, probe_pos[idx], code, device, batch_size, num_workers, flip)
            ce = embed_conditioned(method, ds, cand_pos, code, device, batch_size, num_workers, flip)
            yield idx, pe, ce

    return groups


class Benchmark:
    """An opened benchmark: a dataset directory (KeyedDataset, pairs.jsonl / the samples' pair
    extras, protocol.json) or an insightface .bin (BinDataset, arcface_torch's folds)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.is_bin = self.root.is_file()
        if self.is_bin:
            self.ds = BinDataset(self.root)
            self.pairs = self.ds.pairs()
            self.protocol = None
            self.image_size = self.ds.image_size
        else:
            self.ds = KeyedDataset(self.root)
            self.pairs = load_pairs(self.root, self.ds)
            path = self.root / "protocol.json"
            self.protocol = json.loads(path.read_text()) if path.exists() else None
            self.image_size = self._dataset_size()
        if not self.pairs and self.protocol is None:
            raise ValueError(f"{self.root} has neither pairs (pairs.jsonl / extra.pair) nor protocol.json")

    def _dataset_size(self) -> tuple[int, int] | None:
        """(H, W) of the samples (their image_size [w, h]); one size per benchmark."""
        sizes = {tuple(m["image_size"]) for m in self.ds.metas if m.get("image_size")}
        if len(sizes) > 1:
            raise ValueError(f"{self.root}: samples of several sizes {sorted(sizes)} (w, h); a benchmark has one")
        if not sizes:
            return None
        w, h = next(iter(sizes))
        return int(h), int(w)

    def occlusion(self) -> dict | None:
        """Mean occluded area of all samples and of the occluded ones (None for a .bin)."""
        if self.is_bin:
            return None
        ratios = np.array([float(m.get("occlusion_ratio", 0.0)) for m in self.ds.metas])
        occluded = ratios[ratios > 0]
        return {
            "mean_ratio": float(ratios.mean()) if len(ratios) else 0.0,
            "mean_ratio_occluded": float(occluded.mean()) if len(occluded) else 0.0,
            "occluded_samples": int(len(occluded)),
        }


def check_input_size(model, bench: Benchmark) -> None:
    """Refuse a benchmark whose images differ from an external model's input size (no --resize)."""
    conventions = getattr(model, "conventions", None)
    if conventions is None or conventions.resize or bench.image_size is None:
        return
    if tuple(bench.image_size) != tuple(model.input_size):
        raise UsageError(
            f"model {model.name} takes {size_text(model.input_size)} input but {bench.root} holds "
            f"{size_text(bench.image_size)} images; give --resize to resize them, or score a benchmark "
            "built with the model's template"
        )


def evaluate_benchmark(
    method,
    root: str | Path | Benchmark,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
) -> tuple[dict, tuple | None]:
    """Report of one benchmark (a directory or a .bin, or one opened as Benchmark), and
    (scores, issame) for the ROC plot when it has pairs."""
    bench = root if isinstance(root, Benchmark) else Benchmark(root)
    root, ds = bench.root, bench.ds
    unknown = len(ds) - sum(ds.mask_known)
    if unknown and method.uses_gt_masks:
        what = "an insightface .bin has no masks" if bench.is_bin else "mask_known=false: real occlusions"
        raise ValueError(
            f"{root}: {unknown} of {len(ds)} samples have no pixel masks ({what}), "
            f"but method {method.name!r} is set to take the true masks at test time (uses_gt_masks)"
        )
    check_input_size(method, bench)
    iou = MaskIoU() if method.has_segmentation else None
    emb = embed_dataset(method, ds, device, batch_size, num_workers, flip, iou)
    report: dict = {"benchmark": str(root), "samples": len(ds), "embedding_dim": int(emb.shape[1]), "flip": flip}
    if bench.is_bin:
        report["format"] = "insightface-bin"
        report["folds_rule"] = "arcface_torch: KFold(10, shuffle=False) over pair order"
    occlusion = bench.occlusion()
    if occlusion is not None:
        report["occlusion"] = occlusion
    if method.uses_gt_masks:
        report["test_masks"] = "ground truth"
    roc_data = None
    pairs = bench.pairs
    if pairs:
        scorer = None
        if method.pairwise:
            scorer = lambda a, b: pair_scores(method, ds, a, b, device, batch_size, num_workers, flip)  # noqa: E731
        report["verification"], roc_data = _verification(pairs, ds, emb, scorer)
        report["verification"]["scoring"] = "pairwise" if method.pairwise else "embeddings"
    if bench.protocol is not None:
        protocol = bench.protocol
        if method.pairwise:  # the probe's condition (PDSN: its FDM) applied to the gallery too
            stats: dict = {}
            groups = conditioned_groups(method, ds, device, batch_size, num_workers, flip, stats)
            report["identification"] = _identification(protocol, ds, emb, groups)
            report["identification"].update(scoring="pairwise", conditions=stats.get("conditions", 0))
        else:
            report["identification"] = _identification(protocol, ds, emb)
            report["identification"]["scoring"] = "embeddings"
    if iou is not None:
        report["segmentation"] = iou.result()
        if unknown:  # scored on the samples with exact masks only (None when there are none)
            report["segmentation"]["not_scored"] = f"{unknown} samples without pixel masks (real occlusions)"
    return report, roc_data


def plot_roc(curves: dict[str, tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (scores, issame) in curves.items():
        fpr, tpr, _ = roc_curve(scores, issame, drop_intermediate=False)
        ax.plot(np.maximum(fpr, 1e-5), tpr, lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", ls=":", lw=0.5)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def benchmark_names(benchmarks: list) -> list[str]:
    """Report keys: the folder or file name, qualified with its parent when two share a name
    (two builders' level-30)."""
    names: list[str] = []
    for bench in benchmarks:
        name = Path(bench).name
        if name in names:
            name = f"{Path(bench).parent.name}/{name}"
        names.append(name)
    return names


def score_model(
    loaded: LoadedModel,
    benchmarks: list[str | Path],
    names: list[str] | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
) -> tuple[dict, dict]:
    """(report, ROC curves) of a loaded model on benchmark directories / .bin files. Every
    benchmark is opened and its image size checked against the model before any is embedded."""
    device = resolve_device(device)
    names = names or benchmark_names(list(benchmarks))
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names repeat: {names}")
    opened = [Benchmark(b) for b in benchmarks]
    for bench in opened:
        check_input_size(loaded.model, bench)
    report: dict = {"model": loaded.spec, "model_kind": loaded.kind}
    if loaded.kind == "run":
        report.update(loaded.info)  # checkpoint, step, method, backbone (as before)
    else:
        report["model_info"] = loaded.info
    report.update(
        {
            "input": loaded.input,
            "flip": flip,
            "batch_size": batch_size,
            "device": str(device),
            "benchmarks": {},
        }
    )
    curves: dict = {}
    for name, bench in zip(names, opened):
        log.info("scoring %s on %s", loaded.spec, bench.root)
        result, roc_data = evaluate_benchmark(loaded.model, bench, device, batch_size, num_workers, flip)
        report["benchmarks"][name] = result
        if roc_data is not None:
            curves[name] = roc_data
    return report, curves


def write_report(report: dict, curves: dict, out: str | Path) -> dict:
    """The JSON report at `out` and, when there are pairs, the ROC plot beside it (.roc.png)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if curves:
        png = out.with_suffix(".roc.png")
        plot_roc(curves, png)
        report["roc_png"] = str(png)
    write_text(out, json.dumps(report, indent=2) + "\n")
    return report


def default_out(loaded: LoadedModel) -> Path:
    """RUN/eval_report.json for a run, else eval_report.json in the working directory."""
    return Path(loaded.spec) / "eval_report.json" if loaded.kind == "run" else Path("eval_report.json")


def evaluate_model(
    model: str | Path,
    benchmarks: list[str | Path],
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
    conventions: dict | None = None,
) -> dict:
    """Evaluate any model (models.load_model: run directory, .onnx, TorchScript,
    package.module:factory) on benchmarks; writes the JSON report (+ ROC PNG) to `out` (default
    RUN/eval_report.json for a run, ./eval_report.json otherwise) and returns it."""
    loaded = load_model(str(model), conventions, device, checkpoint)
    report, curves = score_model(loaded, list(benchmarks), None, device, batch_size, num_workers, flip)
    return write_report(report, curves, out or default_out(loaded))


def evaluate_run(
    run_dir: str | Path,
    benchmarks: list[str | Path],
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    num_workers: int = 2,
    flip: bool = True,
) -> dict:
    """Evaluate a training run on benchmarks (evaluate_model with a run directory); writes the
    JSON report (+ ROC PNG) to `out` (default RUN/eval_report.json) and returns it."""
    if not Path(run_dir).is_dir():
        raise ValueError(f"{run_dir} is not a run directory")
    return evaluate_model(run_dir, benchmarks, out, checkpoint, device, batch_size, num_workers, flip)
