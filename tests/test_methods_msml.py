"""MSML: FM bridging, the stop-gradient into the segmentation branch, param groups, the FM
design switches (fm_kernel, res_blocks, res_block, fm_activation, fm_combine, fm_layers, variant),
smoke run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from methods_helpers import CONFIGS, falls, train_and_evaluate

from occsynth_train.config import load_config
from occsynth_train.engine.optim import build_optimizer, lr_factor
from occsynth_train.methods import create_method
from occsynth_train.methods.msml import BottleneckBlock, FeatureMasking, ResBlock, fm_settings, parse_fm_layers
from occsynth_train.models.losses import occlusion_probability, pixel_cross_entropy, structure_consensus_loss


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


# ---- FM design switches -------------------------------------------------------------------------

# The tiny config lists fm_kernel/res_blocks/fm_activation explicitly; a `variant` test nulls them.
NO_EXPLICIT = ("method_kw.fm_kernel=null", "method_kw.res_blocks=null", "method_kw.fm_activation=null")


def _kw(**method_kw):
    return SimpleNamespace(method_kw=method_kw)


def _blocks(fm: FeatureMasking) -> list:
    return [b for b in fm.body if isinstance(b, (ResBlock, BottleneckBlock))]


def test_default_fm_is_the_original_operator():
    assert (
        fm_settings(None)
        == fm_settings(_kw())
        == {"res_blocks": 2, "kernel": 3, "res_block": "basic", "activation": "sigmoid", "combine": "multiply"}
    )
    fm = FeatureMasking(8, 4)
    # 3x3 conv (12->4) + BN + 2 basic blocks (2 x (2 3x3 convs + 2 BNs)) + 1x1 conv with bias
    assert sum(p.numel() for p in fm.parameters()) == 12 * 4 * 9 + 8 + 2 * (2 * 4 * 4 * 9 + 2 * 8) + 4 * 4 + 4
    assert [k for k in fm.state_dict() if k.endswith("weight")][:2] == ["body.0.weight", "body.1.weight"]
    m = _method()  # tiny config: the defaults with res_blocks 1
    for fm in m.fm.values():
        assert fm.body[0].kernel_size == (3, 3) and fm.body[0].padding == (1, 1)
        assert [type(b) for b in _blocks(fm)] == [ResBlock]
        assert (fm.activation, fm.combine) == ("sigmoid", "multiply")


def test_fm_kernel_switch_sets_the_first_conv():
    m = _method("method_kw.fm_kernel=1")
    for fm in m.fm.values():
        assert fm.body[0].kernel_size == (1, 1) and fm.body[0].padding == (0, 0)
    _, _, masks = m._forward_all(torch.randn(2, 3, 32, 32))
    assert masks[3].shape == (2, 64, 4, 4)


def test_res_blocks_count_and_bottleneck_type():
    assert _blocks(_method("method_kw.res_blocks=0").fm["1"]) == []
    m = _method("method_kw.res_blocks=3", "method_kw.res_block=bottleneck")
    for i, fm in m.fm.items():
        c = m.backbone.stage_channels[int(i) - 1]
        blocks = _blocks(fm)
        assert [type(b) for b in blocks] == [BottleneckBlock] * 3
        assert blocks[0].body[0].out_channels == c // 2 and blocks[0].body[-2].out_channels == c
        assert isinstance(blocks[0].act, torch.nn.PReLU)
    assert _blocks(FeatureMasking(8, 256, 1, res_block="bottleneck"))[0].body[0].out_channels == 128  # capped
    # a bottleneck block is residual: with its last BN scaled to 0 it is PReLU(x), i.e. x for x >= 0
    b = BottleneckBlock(16).eval()
    torch.nn.init.zeros_(b.body[-1].weight)
    x = torch.rand(1, 16, 5, 5)
    assert torch.allclose(b(x), x)
    _, _, masks = m._forward_all(torch.randn(2, 3, 32, 32))
    assert masks[1].shape == (2, 16, 16, 16)


def test_activation_ranges_sigmoid_in_0_1_tanh_in_minus1_1():
    torch.manual_seed(0)
    ys, yf = torch.randn(2, 8, 6, 6) * 3, torch.randn(2, 4, 6, 6) * 3
    _, m_sig = FeatureMasking(8, 4, 1, activation="sigmoid").eval()(ys, yf)
    _, m_tanh = FeatureMasking(8, 4, 1, activation="tanh").eval()(ys, yf)
    assert 0 < m_sig.min() and m_sig.max() < 1
    assert -1 < m_tanh.min() < 0 < m_tanh.max() < 1  # a tanh mask does take negative values
    masks = _method("method_kw.fm_activation=tanh")._forward_all(torch.randn(2, 3, 32, 32))[2]
    assert all(-1 < v.min() and v.max() < 1 for v in masks.values())
    assert any(v.min() < 0 for v in masks.values())


@pytest.mark.parametrize(
    "activation,combine,expect",
    [
        ("sigmoid", "multiply", lambda yf: 0.5 * yf),
        ("sigmoid", "residual", lambda yf: 0.5 + yf),
        ("tanh", "multiply", lambda yf: torch.zeros_like(yf)),
        ("tanh", "residual", lambda yf: yf),
    ],
)
def test_combine_on_a_zeroed_last_conv(activation, combine, expect):
    fm = FeatureMasking(8, 4, 1, activation=activation, combine=combine).eval()
    torch.nn.init.zeros_(fm.body[-1].weight)
    torch.nn.init.zeros_(fm.body[-1].bias)  # x = 0: M = act(0) = 0.5 (sigmoid) / 0 (tanh)
    ys, yf = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
    z, mask = fm(ys, yf)
    assert torch.allclose(mask, torch.full_like(yf, 0.5 if activation == "sigmoid" else 0.0))
    assert torch.allclose(z, expect(yf))


def test_residual_combine_is_act_of_body_plus_face_feature():
    fm = FeatureMasking(8, 4, 2, activation="tanh", combine="residual").eval()
    ys, yf = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
    z, mask = fm(ys, yf)
    want = torch.tanh(fm.body(torch.cat([ys, yf], 1)))
    assert torch.allclose(mask, want) and torch.allclose(z, want + yf)
    assert not torch.allclose(z, mask * yf)


@pytest.mark.parametrize(
    "variant,kernel,res_blocks,activation",
    [
        ("FRS", 3, 2, "sigmoid"),
        ("FRT", 3, 2, "tanh"),
        ("FS", 3, 0, "sigmoid"),
        ("RS", 1, 2, "sigmoid"),
        ("S", 1, 0, "sigmoid"),
        ("T", 1, 0, "tanh"),
        ("tfr", 3, 2, "tanh"),
    ],
)
def test_variant_letters_map_to_switches(variant, kernel, res_blocks, activation):
    s = fm_settings(_kw(variant=variant))
    assert (s["kernel"], s["res_blocks"], s["activation"]) == (kernel, res_blocks, activation)
    assert (s["res_block"], s["combine"]) == ("basic", "multiply")  # a variant leaves these alone
    # agreeing explicit switches are fine; R takes its count from res_blocks
    assert fm_settings(_kw(variant=variant, fm_kernel=kernel, fm_activation=activation)) == s
    if res_blocks:
        assert fm_settings(_kw(variant=variant, res_blocks=4))["res_blocks"] == 4


def test_variant_builds_the_model():
    m = _method("method_kw.variant=RT", "method_kw.res_block=bottleneck", "method_kw.fm_combine=residual", *NO_EXPLICIT)
    for fm in m.fm.values():
        assert fm.body[0].kernel_size == (1, 1)
        assert [type(b) for b in _blocks(fm)] == [BottleneckBlock] * 2
        assert (fm.activation, fm.combine) == ("tanh", "residual")
    # the tiny config's explicit fm_kernel=3 contradicts a variant without F
    with pytest.raises(ValueError, match=r"variant 'RT'.*fm_kernel"):
        _method("method_kw.variant=RT")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"variant": "FS", "res_blocks": 1}, r"variant 'FS' sets res_blocks=0, contradicting res_blocks=1"),
        ({"variant": "RS", "res_blocks": 0}, r"variant 'RS'.*contradicts res_blocks=0"),
        ({"variant": "FRS", "fm_kernel": 1}, r"variant 'FRS' sets fm_kernel=3, contradicting fm_kernel=1"),
        ({"variant": "FRS", "fm_activation": "tanh"}, r"variant 'FRS' sets fm_activation='sigmoid'.*'tanh'"),
        ({"variant": "FR"}, r"exactly one of S/T"),
        ({"variant": "FRST"}, r"exactly one of S/T"),
        ({"variant": "FFS"}, r"each once"),
        ({"variant": "XS"}, r"letters from F, R"),
        ({"variant": ""}, r"variant"),
        ({"fm_kernel": 5}, r"fm_kernel must be 3 or 1"),
        ({"res_blocks": -1}, r"res_blocks must be an integer >= 0"),
        ({"res_blocks": 1.5}, r"res_blocks must be"),
        ({"res_block": "wide"}, r"res_block must be one of"),
        ({"fm_activation": "relu"}, r"fm_activation must be one of"),
        ({"fm_activation": ["tanh"]}, r"fm_activation"),
        ({"fm_combine": "add"}, r"fm_combine must be one of"),
    ],
)
def test_contradictions_and_bad_switch_values_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        fm_settings(_kw(**kw))


def test_fm_layers_mask_string_equals_stage_list():
    assert parse_fm_layers("0111") == [2, 3, 4] and parse_fm_layers("1001") == [1, 4]
    assert parse_fm_layers("0000") == [] and parse_fm_layers([4, 2]) == [2, 4]
    a, b = _method("method_kw.fm_layers='0111'"), _method("method_kw.fm_layers=[2,3,4]")
    assert a.fm_layers == b.fm_layers == [2, 3, 4] and sorted(a.fm.keys()) == ["2", "3", "4"]
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    x = torch.randn(2, 3, 32, 32)
    a.load_state_dict(b.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.allclose(a.embed(x), b.embed(x))
    assert _method("method_kw.fm_layers='0000'").fm_layers == []


@pytest.mark.parametrize(
    "value,match",
    [
        ("011", r"4 characters of 0/1"),
        ("0121", r"4 characters of 0/1"),
        ("abcd", r"4 characters"),
        (111, r"quoted 0/1 string"),
        ({"1": 1}, r"list of stage indices"),
        ([0], r"in 1\.\.4"),
        ([5], r"in 1\.\.4"),
        ([1, 1], r"repeated"),
        ([True], r"stage indices"),
        (["1"], r"stage indices"),
    ],
)
def test_bad_fm_layers_raise(value, match):
    with pytest.raises(ValueError, match=match):
        parse_fm_layers(value, 4)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("method_kw.fm_kernel=1",),
        ("method_kw.res_blocks=0",),
        ("method_kw.res_block=bottleneck",),
        ("method_kw.fm_activation=tanh",),
        ("method_kw.fm_combine=residual",),
        ("method_kw.variant=FRT", *NO_EXPLICIT),
        ("method_kw.variant=S", "method_kw.fm_combine=residual", *NO_EXPLICIT),
        ("method_kw.variant=RS", "method_kw.res_block=bottleneck", "method_kw.fm_layers='0110'", *NO_EXPLICIT),
    ],
)
def test_no_face_gradient_into_segmentation_for_every_variant(overrides):
    m = _method(*overrides)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    emb, _, _ = m._forward_all(x)
    torch.nn.functional.cross_entropy(m.head(emb, labels), labels).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.seg.parameters())
    fm_grads = [p.grad for p in m.fm.parameters()]
    assert fm_grads and all(g is not None for g in fm_grads)
    assert any(g.abs().max() > 0 for g in fm_grads)


# ---- the occlusion loss: structure-via-consensus (default) or pixel CE -------------------------


def _kl2(a: float, b: float) -> float:
    """KL([a, 1-a] || [b, 1-b]) for two-class distributions, by hand."""
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def _logits_for(q: torch.Tensor) -> torch.Tensor:
    """Two-channel logits [visible, occluded] whose softmax gives P(occluded) = q."""
    return torch.stack([torch.zeros_like(q), torch.log(q / (1 - q))], 1)


def test_consensus_loss_matches_a_hand_computed_case():
    # sample 1: top row visible, bottom row occluded; sample 2: all visible (no occluded blob)
    masks = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])[:, None]
    q = torch.tensor([[[0.2, 0.4], [0.7, 0.9]], [[0.1, 0.1], [0.3, 0.5]]], dtype=torch.float64)
    logits = _logits_for(q)
    # blob "visible": P(visible) averaged over each sample's visible pixels
    vis1, vis2 = (0.8 + 0.6) / 2, (0.9 + 0.9 + 0.7 + 0.5) / 4  # 0.7, 0.75
    label_vis = (-math.log(vis1) - math.log(vis2)) / 2
    dev_vis = (_kl2(vis1, 0.8) + _kl2(vis1, 0.6) + sum(_kl2(vis2, p) for p in (0.9, 0.9, 0.7, 0.5))) / (2 * 6)
    # blob "occluded": only sample 1 has it; sample 2 counts as 0 in the batch mean
    occ1 = (0.7 + 0.9) / 2
    label_occ = (-math.log(occ1) + 0.0) / 2
    dev_occ = (_kl2(occ1, 0.7) + _kl2(occ1, 0.9)) / (2 * 2)
    want = ((10 * label_vis + 5 * dev_vis) + (10 * label_occ + 5 * dev_occ)) / 2
    got = structure_consensus_loss(logits, masks)
    assert got.item() == pytest.approx(want, rel=1e-9)
    # one-channel (binary) logits are the same model of P(occluded)
    assert structure_consensus_loss(torch.log(q / (1 - q))[:, None], masks).item() == pytest.approx(want, rel=1e-9)
    # alpha / beta weight the label and the consensus (deviation) parts
    assert structure_consensus_loss(logits, masks, alpha=1.0, beta=0.0).item() == pytest.approx(
        (label_vis + label_occ) / 2, rel=1e-9
    )


def test_consensus_deviation_vanishes_when_each_blob_agrees_and_penalises_speckle():
    masks = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])[:, None]
    flat = _logits_for(torch.tensor([[[0.3, 0.3], [0.6, 0.6]]], dtype=torch.float64))
    assert structure_consensus_loss(flat, masks, alpha=0.0, beta=1.0).item() == pytest.approx(0.0, abs=1e-12)
    # same per-blob mean probability, spread out inside the blobs: only the deviation part grows
    speckle = _logits_for(torch.tensor([[[0.1, 0.5], [0.4, 0.8]]], dtype=torch.float64))
    assert structure_consensus_loss(speckle, masks, alpha=1.0, beta=0.0).item() == pytest.approx(
        structure_consensus_loss(flat, masks, alpha=1.0, beta=0.0).item()
    )
    assert structure_consensus_loss(speckle, masks, alpha=0.0, beta=1.0).item() > 0.01


def test_consensus_loss_gradient_flows_and_blobs_must_carry_one_label():
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    structure_consensus_loss(logits, masks).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() > 0
    blobs = torch.zeros(2, 1, 8, 8)  # one blob over pixels of both labels
    with pytest.raises(ValueError, match="blob"):
        structure_consensus_loss(logits.detach(), masks, blobs=blobs)


def _batch(m, n=2):
    torch.manual_seed(1)
    h, w = m.input_size
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, h // 2 :] = 1.0
    return SimpleNamespace(images=torch.randn(n, 3, h, w), masks=masks, labels=torch.arange(n) % 5)


def test_occlusion_loss_is_the_consensus_loss_by_default_and_ce_as_an_option():
    m = _method()
    batch = _batch(m)
    with torch.no_grad():
        terms = m(batch, 0)
        logits = m.seg(batch.images)
    assert terms["occ"].item() == pytest.approx(structure_consensus_loss(logits, batch.masks).item(), rel=1e-5)
    m_ce = _method("method_kw.occlusion_loss=ce", "method_kw.seg_weight=0.5")
    with torch.no_grad():
        terms = m_ce(batch, 0)
        logits = m_ce.seg(batch.images)
    assert terms["occ"].item() == pytest.approx(0.5 * pixel_cross_entropy(logits, batch.masks).item(), rel=1e-5)
    m_ab = _method("method_kw.consensus_alpha=1.0", "method_kw.consensus_beta=0.0")
    with torch.no_grad():
        got = m_ab(batch, 0)["occ"].item()
        want = structure_consensus_loss(m_ab.seg(batch.images), batch.masks, alpha=1.0, beta=0.0).item()
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="occlusion_loss"):
        _method("method_kw.occlusion_loss=dice")


# ---- Table-4 switches: segmentation-only FM input, binarised mask ------------------------------


def test_seg_only_fm_input_ignores_the_face_feature():
    fm = FeatureMasking(8, 4, 1, fm_input="seg").eval()
    assert fm.body[0].in_channels == 8  # Y_s alone, no concat with Y_f
    ys, yf = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
    z, mask = fm(ys, yf)
    z2, mask2 = fm(ys, 3 * yf + 1)
    assert torch.allclose(mask, mask2) and torch.allclose(z, mask * yf)
    assert FeatureMasking(8, 4, 1).body[0].in_channels == 12  # the default concatenates
    m = _method("method_kw.fm_input=seg")
    for i, fm in m.fm.items():
        assert fm.body[0].in_channels == m.seg.decoder_channels[4 - int(i)]
    assert all(v.shape[0] == 2 for v in m._forward_all(torch.randn(2, 3, 32, 32))[2].values())
    with pytest.raises(ValueError, match="fm_input"):
        _method("method_kw.fm_input=face")


def test_binary_mask_is_hard_forward_and_straight_through_backward():
    torch.manual_seed(0)
    soft = FeatureMasking(8, 4, 1).eval()
    hard = FeatureMasking(8, 4, 1, binary=True).eval()
    hard.load_state_dict(soft.state_dict())
    ys, yf, w = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    z_s, m_s = soft(ys, yf)
    z_h, m_h = hard(ys, yf)
    assert set(m_h.unique().tolist()) <= {0.0, 1.0} and 0 < m_h.mean() < 1
    assert torch.equal(m_h, (m_s > 0.5).float()) and torch.allclose(z_h, m_h * yf)
    # straight-through: d(hard M)/dx is taken as d(sigmoid)/dx, so with z = M * Y_f the FM
    # weights get the gradient the soft operator would get for the same upstream gradient
    (z_s * w).sum().backward()
    (z_h * w).sum().backward()
    for (name, a), b in zip(soft.named_parameters(), hard.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    tanh = FeatureMasking(8, 4, 1, activation="tanh", binary=True).eval()
    _, m_t = tanh(ys, yf)
    assert set(m_t.unique().tolist()) <= {0.0, 1.0}  # tanh masks binarise at 0 (act(0)) to {0, 1}


def test_binary_mask_switch_builds_hard_fms():
    m = _method("method_kw.fm_mask=binary")
    masks = m._forward_all(torch.randn(2, 3, 32, 32))[2]
    assert masks and all(set(v.unique().tolist()) <= {0.0, 1.0} for v in masks.values())
    with pytest.raises(ValueError, match="fm_mask"):
        _method("method_kw.fm_mask=hard")


def test_segmentation_mask_reading_uses_the_branch_prediction_and_no_gradient():
    m = _method("method_kw.fm_mask=segmentation", "method_kw.detach_seg=false")
    assert len(m.fm) == 0 and m.fm_layers == [1, 2, 3, 4]  # no FM operator: the mask is the prediction
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    m.eval()
    emb, logits, masks = m._forward_all(x)
    visible = (occlusion_probability(logits) < 0.5).float()
    for i, mask in masks.items():
        size = m.backbone.stage_channels[i - 1], 32 >> i, 32 >> i
        assert mask.shape[1:] == size
        want = torch.nn.functional.interpolate(visible, size=size[1:], mode="nearest")
        assert torch.equal(mask, want.expand_as(mask))
    m.train()
    emb, _, _ = m._forward_all(x)
    torch.nn.functional.cross_entropy(m.head(emb, labels), labels).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.seg.parameters())
    for bad in ("method_kw.fm_combine=residual", "method_kw.fm_input=seg"):
        with pytest.raises(ValueError, match="fm_mask"):
            _method("method_kw.fm_mask=segmentation", bad)


# ---- the paper's two Table-1 models and their optimiser ----------------------------------------


@pytest.mark.parametrize(
    "name,backbone,size,dim,in_ch",
    [("msml_a18", "iresnet18", (112, 112), 512, 3), ("msml_l29", "lightcnn29", (128, 128), 128, 1)],
)
def test_paper_configs_build_with_the_paper_optimiser(name, backbone, size, dim, in_ch):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.train=[x]"])
    assert (cfg.model.backbone, tuple(cfg.model.input_size)) == (backbone, size)
    assert cfg.data.batch_size == 512 and cfg.optim.weight_decay == 1e-5 and cfg.optim.momentum == 0.9
    assert cfg.method_kw.get("occlusion_loss", "consensus") == "consensus"
    torch.manual_seed(0)
    m = create_method("msml", cfg, num_classes=5)
    assert m.backbone.embedding_size == dim and m.input_size == size
    assert cfg.model.backbone_kw.get("in_channels", 3) == in_ch and m.fm_layers == [1, 2, 3, 4]
    opt = build_optimizer(m.param_groups(), cfg.optim)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["seg"]["lr"] == pytest.approx(0.1 * groups["face"]["lr"]) and groups["face"]["lr"] == cfg.optim.lr
    assert all(g["weight_decay"] == 1e-5 and g["momentum"] == 0.9 for g in groups.values())
    assert {id(p) for p in groups["seg"]["params"]} == {id(p) for p in m.seg.parameters()}
    # LR / 10 when epochs 11, 16 and 21 begin (after 10, 15, 20 complete epochs) of 25
    assert cfg.train.epochs == 25 and cfg.optim.milestone_epochs == [10, 15, 20]
    per_epoch, total = 100, 2500
    factors = [lr_factor(e * per_epoch + s, total, cfg.optim, cfg.train.epochs) for e in range(25) for s in (0, 99)]
    want = [0.1 ** sum(e >= k for k in (10, 15, 20)) for e in range(25) for _ in (0, 99)]
    assert factors == pytest.approx(want)
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        assert m.eval().embed(x).shape == (2, dim)
