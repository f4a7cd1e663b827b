"""The torchvision stand-in: its NMS against a brute-force reference, the fallback and the
real-import paths (each with sys.modules restored afterwards)."""

from __future__ import annotations

import builtins
import sys
import types

import numpy as np
import pytest
import torch

from occsynth.faces import _torchvision_compat as compat


def _is_tv(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


@pytest.fixture
def isolated_torchvision(monkeypatch):
    """Remove every torchvision entry from sys.modules for the test, restore them after."""
    saved = {k: v for k, v in sys.modules.items() if _is_tv(k)}
    for name in saved:
        del sys.modules[name]
    monkeypatch.setattr(compat, "import_error", compat.import_error)
    yield
    for name in [k for k in sys.modules if _is_tv(k)]:
        del sys.modules[name]
    sys.modules.update(saved)


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float) -> list[int]:
    """Greedy NMS spelled out: one candidate at a time against every kept box of its class.
    Arithmetic in the boxes' dtype, comparison in float64, like torchvision's CPU kernel."""
    b = boxes.numpy()
    s = scores.tolist()
    c = idxs.tolist()
    zero = b.dtype.type(0)

    def iou(p, q):
        w = max(min(p[2], q[2]) - max(p[0], q[0]), zero)
        h = max(min(p[3], q[3]) - max(p[1], q[1]), zero)
        inter = w * h
        area_p = (p[2] - p[0]) * (p[3] - p[1])
        area_q = (q[2] - q[0]) * (q[3] - q[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(inter / (area_p + area_q - inter))

    kept: list[int] = []
    for i in sorted(range(len(s)), key=lambda k: (-s[k], k)):
        if all(c[k] != c[i] or not iou(b[k], b[i]) > thr for k in kept):
            kept.append(i)
    return kept  # already in decreasing-score order


def _random_case(rng: np.random.Generator, dtype: torch.dtype):
    n = int(rng.integers(0, 60))
    if rng.random() < 0.5:
        # Integer grid with rounded scores: duplicate boxes, exact IoU ties, equal scores.
        xy = rng.integers(0, 40, size=(n, 2))
        wh = rng.integers(0, 25, size=(n, 2))
        scores = np.round(rng.random(n), 1)
    else:
        xy = rng.random((n, 2)) * 100
        wh = rng.random((n, 2)) * 50
        scores = rng.random(n)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    idxs = rng.integers(0, int(rng.integers(1, 5)), size=n)
    return (
        torch.as_tensor(boxes, dtype=dtype).reshape(-1, 4),
        torch.as_tensor(scores, dtype=dtype),
        torch.as_tensor(idxs, dtype=torch.int64),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_matches_brute_force_reference(dtype):
    rng = np.random.default_rng(1234)
    sizes = []
    for _ in range(300):
        boxes, scores, idxs = _random_case(rng, dtype)
        thr = float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0]))
        got = compat.batched_nms(boxes, scores, idxs, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == _reference_nms(boxes, scores, idxs, thr)
        sizes.append((len(boxes), len(got)))
    # The cases exercise suppression, not only empty or untouched inputs.
    assert any(n > len_kept > 0 for n, len_kept in sizes)
    assert any(n == 0 for n, _ in sizes)


def test_batched_nms_semantics_on_hand_made_boxes():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.9])
    # Boxes 0 and 4 tie at 0.9: the lower index wins; box 2 (class 1) is not suppressed by class 0.
    idxs = torch.tensor([0, 0, 1, 0, 0])
    assert compat.batched_nms(boxes, scores, idxs, 0.5).tolist() == [2, 0, 3]
    # The same boxes in one class: 2 suppresses 0, 1 and 4 (IoU 1 and 0.68 > 0.5).
    assert compat.batched_nms(boxes, scores, torch.zeros(5, dtype=torch.int64), 0.5).tolist() == [2, 3]
    # IoU of 0 and 1 is 81/119 = 0.68: kept at a threshold of 0.7.
    one = torch.zeros(2, dtype=torch.int64)
    assert compat.batched_nms(boxes[:2], scores[:2], one, 0.7).tolist() == [0, 1]


def test_batched_nms_empty_and_bad_shapes():
    empty = compat.batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        compat.batched_nms(torch.zeros((3, 5)), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="scores and idxs"):
        compat.batched_nms(torch.zeros((3, 4)), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)


def test_to_tensor_like_torchvision():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = compat.to_tensor(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert torch.allclose(t, torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255))
    # Float input (facenet-pytorch passes np.float32 crops) is not rescaled.
    f = compat.to_tensor(img.astype(np.float32))
    assert torch.equal(f, torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)))
    assert compat.to_tensor(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)


def test_fallback_installed_when_import_fails(isolated_torchvision, monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if _is_tv(name):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    # A half-finished import leaves submodules behind; they must not survive.
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    monkeypatch.setattr(builtins, "__import__", failing_import)

    assert compat.ensure_torchvision() == "fallback"
    assert "torchvision::nms" in compat.import_error
    assert "torchvision._meta_registrations" not in sys.modules
    assert sys.modules["torchvision.ops.boxes"].batched_nms is compat.batched_nms
    assert sys.modules["torchvision.transforms.functional"].to_tensor is compat.to_tensor
    root = sys.modules["torchvision"]
    assert root.ops.boxes is sys.modules["torchvision.ops.boxes"]
    assert root.transforms.functional is sys.modules["torchvision.transforms.functional"]

    # Idempotent: the stand-in is kept, not rebuilt.
    before = {k: v for k, v in sys.modules.items() if _is_tv(k)}
    assert compat.ensure_torchvision() == "fallback"
    assert {k: v for k, v in sys.modules.items() if _is_tv(k)} == before

    # The import statements facenet-pytorch uses resolve to the stand-in.
    monkeypatch.setattr(builtins, "__import__", real_import)
    from torchvision.ops.boxes import batched_nms
    from torchvision.transforms import functional

    assert batched_nms is compat.batched_nms and functional.to_tensor is compat.to_tensor
    assert compat.load_mtcnn_class().__name__ == "MTCNN"


def _fake_torchvision(with_to_tensor: bool = True) -> dict[str, types.ModuleType]:
    def nms(boxes, scores, idxs, iou_threshold):  # pragma: no cover - never called
        raise AssertionError

    mods = {
        name: types.ModuleType(name)
        for name in (
            "torchvision",
            "torchvision.ops",
            "torchvision.ops.boxes",
            "torchvision.transforms",
            "torchvision.transforms.functional",
        )
    }
    for m in mods.values():
        m.__path__ = []
    mods["torchvision.ops.boxes"].batched_nms = nms
    if with_to_tensor:
        mods["torchvision.transforms.functional"].to_tensor = lambda pic: pic
    return mods


def test_working_torchvision_is_used_and_kept(isolated_torchvision):
    fake = _fake_torchvision()
    sys.modules.update(fake)
    assert compat.ensure_torchvision() == "torchvision"
    assert compat.import_error is None
    for name, module in fake.items():
        assert sys.modules[name] is module
    assert not hasattr(sys.modules["torchvision"], "__occsynth_fallback__")


def test_torchvision_lacking_a_function_gets_the_fallback(isolated_torchvision):
    sys.modules.update(_fake_torchvision(with_to_tensor=False))
    assert compat.ensure_torchvision() == "fallback"
    assert "to_tensor" in compat.import_error
    assert sys.modules["torchvision.transforms.functional"].to_tensor is compat.to_tensor


def test_matches_real_torchvision_when_it_imports():
    if compat.ensure_torchvision() != "torchvision":
        pytest.skip(f"real torchvision does not import here ({compat.import_error}); stand-in in use")
    import torchvision

    rng = np.random.default_rng(7)
    for _ in range(200):
        boxes, scores, idxs = _random_case(rng, torch.float32)
        if len(set(scores.tolist())) != len(scores):
            continue  # torchvision's order among equal scores is unspecified
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, thr)
        assert compat.batched_nms(boxes, scores, idxs, thr).tolist() == expected.tolist()


def test_fallback_install_survives_imports_from_another_thread(isolated_torchvision, monkeypatch):
    """The CLI imports matplotlib in a background thread while a build starts its detector:
    installing the stand-in must not iterate sys.modules itself while another import adds to
    it ("dictionary changed size during iteration", seen once in a full test run)."""
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    real_check = compat._is_torchvision_entry
    added = []

    def check_while_another_thread_imports(name):
        if not added:  # a module appears in sys.modules during the scan, as an import elsewhere would
            added.append("occsynth_test_thread_import")
            sys.modules[added[0]] = types.ModuleType(added[0])
        return real_check(name)

    monkeypatch.setattr(compat, "_is_torchvision_entry", check_while_another_thread_imports)
    try:
        compat._install_fallback()
    finally:
        sys.modules.pop("occsynth_test_thread_import", None)
    assert added and "torchvision._meta_registrations" not in sys.modules
    assert sys.modules["torchvision.ops.boxes"].batched_nms is compat.batched_nms
