"""MSML: FM bridging, the stop-gradient into the segmentation branch, param groups, smoke run."""
from __future__ import annotations

import torch

from occsynth_train.config import load_config
from occsynth_train.methods import create_method
from occsynth_train.methods.msml import FeatureMasking
from methods_helpers import CONFIGS, falls, train_and_evaluate
from train_fixtures import one_torch_thread, sk_faces, tiny_pairs, tiny_train  # noqa: F401


def _method(*overrides):
    cfg = load_config(CONFIGS / "msml_tiny_cpu.yaml", ["data.train=[x]", *overrides])
    torch.manual_seed(0)
    return create_method("msml", cfg, num_classes=5)


def test_fm_masks_each_face_stage_with_the_same_size_decoder_map():
    m = _method()
    x = torch.randn(2, 3, 32, 32)
    _, logits, masks = m._forward_all(x)
    assert logits.shape == (2, 2, 32, 32)
    sizes = [16, 8, 4, 2]
    for i in (1, 2, 3, 4):
        c = m.backbone.stage_channels[i - 1]
        assert masks[i].shape == (2, c, sizes[i - 1], sizes[i - 1])
        assert masks[i].min() >= 0 and masks[i].max() <= 1


def test_face_loss_sends_no_gradient_into_segmentation_branch():
    m = _method()
    x = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([0, 1])
    emb, _, _ = m._forward_all(x)
    torch.nn.functional.cross_entropy(m.head(emb, labels), labels).backward()
    seg_grads = [p.grad for p in m.seg.parameters()]
    assert all(g is None or g.abs().max() == 0 for g in seg_grads)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.fm.parameters())
    # without the detach (an ablation switch), the face loss does reach the decoder
    m2 = _method("method_kw.detach_seg=false")
    emb, _, _ = m2._forward_all(x)
    torch.nn.functional.cross_entropy(m2.head(emb, labels), labels).backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m2.seg.ups.parameters())


def test_fm_output_is_mask_times_face_feature():
    fm = FeatureMasking(8, 4, res_blocks=1).eval()
    ys, yf = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
    z, mask = fm(ys, yf)
    assert torch.allclose(z, mask * yf)


def test_fm_layers_option_and_separate_branch_lrs():
    m = _method("method_kw.fm_layers=[3,4]", "method_kw.seg_lr_scale=0.1")
    assert sorted(m.fm.keys()) == ["3", "4"]
    groups = {g["name"]: g for g in m.param_groups()}
    assert groups["seg"]["lr_scale"] == 0.1 and groups["face"]["lr_scale"] == 1.0
    n_all = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_all


def test_msml_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    occ, report, _ = train_and_evaluate("msml", tiny_train, tiny_pairs, tmp_path / "run", term="occ")
    assert falls(occ)  # the segmentation branch learns the blocks
    seg = report["segmentation"]
    assert seg["miou"] is not None and 0.0 <= seg["miou"] <= 1.0
