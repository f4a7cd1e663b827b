"""SOIDN (Zeng et al., IET Biometrics 2021): VGG16 without BN as the paper, a VGG-Face checkpoint
through train.init_from (converted, input normalisation folded into conv1_1), the ">50 images per
identity" training-set filter, OMA mask range and shape, segmentation supervision, smoke run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from methods_helpers import CONFIGS, falls, train_and_evaluate
from PIL import Image

from occsynth.benchmarks import get_builder
from occsynth.build import BuildConfig
from occsynth.cli import main
from occsynth_train.config import load_config
from occsynth_train.engine.checkpoint import save_checkpoint
from occsynth_train.engine.trainer import init_weights
from occsynth_train.methods import create_method
from occsynth_train.methods.soidn import vggface_init_state
from occsynth_train.models.backbones import create_backbone
from occsynth_train.models.backbones.vgg import VGGFACE_CONVS, VGGFACE_MEAN_RGB, fold_input_normalisation

TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16: features.N
BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _tiny_soidn(*overrides):
    cfg = load_config(CONFIGS / "soidn_tiny_cpu.yaml", ["data.train=[x]", *overrides])
    return create_method("soidn", cfg, 5)


def fake_vggface(fc_in: int, hidden: int, layout: str = "oxford", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict named like a VGG-Face port (random values; nothing is downloaded):
    'oxford' = conv1_1 ... conv5_3, fc6, fc7, fc8 (the release's layer names);
    'torchvision' = features.N / classifier.N (torchvision's VGG16 layout)."""
    g = torch.Generator().manual_seed(seed)
    shapes, cin = [], 3
    for widths in BLOCKS:
        for w in widths:
            shapes.append((w, cin))
            cin = w
    names = VGGFACE_CONVS if layout == "oxford" else [f"features.{i}" for i in TORCHVISION_CONVS]
    fcs = ("fc6", "fc7", "fc8") if layout == "oxford" else ("classifier.0", "classifier.3", "classifier.6")
    state = {}
    for name, (cout, cin) in zip(names, shapes):
        state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        state[f"{name}.bias"] = torch.randn(cout, generator=g)
    for name, (o, i) in zip(fcs, [(hidden, fc_in), (hidden, hidden), (2622, hidden)]):
        state[f"{name}.weight"] = torch.randn(o, i, generator=g) * 0.01
        state[f"{name}.bias"] = torch.randn(o, generator=g)
    return state


def test_vgg16_is_the_vggface_layout_without_bn_by_default():
    with torch.device("meta"):
        net = create_backbone("vgg16")
    convs = [m for m in net.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    # BN stays an option
    with torch.device("meta"):
        bn = create_backbone("vgg16", batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 13
    # and SOIDN's two VGG16 trunks (face network, FCN-8s) follow the backbone's setting
    m = _tiny_soidn()
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    m = _tiny_soidn("model.backbone_kw.batch_norm=true")
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.seg.stages.modules()) == 13


def test_vggface_embedding_is_relu_fc7_without_bn1d():
    net = create_backbone("vgg16", input_size=32, hidden=64, embedding_size=64, embedding="relu").eval()
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
    with torch.no_grad():
        last = net.forward_features(torch.randn(2, 3, 32, 32))[-1]
        e = net.forward_head(last)
        assert torch.equal(e, F.relu(net.fc7(net.fc6(torch.flatten(last, 1)))))  # VGG-Face's relu7 descriptor
    assert (e >= 0).all() and (e > 0).any()
    with pytest.raises(ValueError, match="embedding"):
        create_backbone("vgg16", input_size=32, embedding="tanh")


def test_paper_config_is_vgg16_without_bn_from_vggface():
    cfg = load_config(CONFIGS / "soidn_vgg16.yaml")
    kw = cfg.model.backbone_kw
    assert cfg.model.backbone == "vgg16" and kw["batch_norm"] is False
    assert kw["embedding"] == "relu" and kw["embedding_size"] == 4096 and cfg.model.head == "softmax"
    assert cfg.model.input_size == [224, 224] and cfg.method_kw["seg_weight"] == 1.0
    assert cfg.train.init_from and cfg.train.init_from.endswith(".pt")  # a converted VGG-Face checkpoint


@pytest.mark.parametrize("layout", ["oxford", "torchvision"])
def test_a_vggface_checkpoint_loads_through_init_from(tmp_path, layout):
    # the tiny config's geometry: 16 px -> a 1x1 pool5, so fc6 takes 512 inputs (25088 at 224 px)
    m = _tiny_soidn("model.backbone_kw.embedding=relu", "method_kw.fcn_hidden=64")  # FCN conv6/7 as wide as fc6/7
    hidden = m.backbone.fc6[0].out_features
    assert hidden == 64
    src = fake_vggface(512, hidden, layout)
    path = save_checkpoint(tmp_path / "vggface_soidn.pt", vggface_init_state(src, fcn_kernel=1))
    report = init_weights(m, path)
    vgg_keys = {k for k in m.state_dict() if k.startswith(("backbone.stages.", "seg.stages."))}
    assert len(vgg_keys) == 2 * 13 * 2  # weight + bias of 13 convs in each trunk
    assert vgg_keys <= set(report["loaded"])
    assert {"backbone.fc6.0.weight", "backbone.fc6.0.bias", "backbone.fc7.weight", "backbone.fc7.bias"} <= set(
        report["loaded"]
    )
    assert {"seg.conv67.0.weight", "seg.conv67.3.weight"} <= set(report["loaded"])  # FCN's convolutionalised fc6/7
    assert not report["unexpected"] and not report["skipped_shape"]
    names = VGGFACE_CONVS if layout == "oxford" else [f"features.{i}" for i in TORCHVISION_CONVS]
    convs = [x for x in m.backbone.stages.modules() if isinstance(x, torch.nn.Conv2d)]
    seg_convs = [x for x in m.seg.stages.modules() if isinstance(x, torch.nn.Conv2d)]
    for name, conv, seg_conv in list(zip(names, convs, seg_convs))[1:]:  # conv1_1 is folded (next test)
        assert torch.equal(conv.weight, src[f"{name}.weight"]) and torch.equal(conv.bias, src[f"{name}.bias"])
        assert torch.equal(seg_conv.weight, src[f"{name}.weight"])
    fc6 = "fc6" if layout == "oxford" else "classifier.0"
    assert torch.equal(m.backbone.fc6[0].weight, src[f"{fc6}.weight"])
    assert torch.equal(m.seg.conv67[0].weight, src[f"{fc6}.weight"].view(hidden, 512, 1, 1))
    # the face network and the segmentation trunk start from the same conv1_1
    assert torch.equal(convs[0].weight, seg_convs[0].weight)


def test_a_vggface_checkpoint_into_the_bn_option(tmp_path):
    m = _tiny_soidn("model.backbone_kw.batch_norm=true", "method_kw.fcn_hidden=64")
    src = fake_vggface(512, 64)
    report = init_weights(
        m, save_checkpoint(tmp_path / "bn.pt", vggface_init_state(src, batch_norm=True, fcn_kernel=1))
    )
    conv_weights = {
        f"{name}.weight"
        for name, module in m.named_modules()
        if name.startswith(("backbone.stages.", "seg.stages.")) and isinstance(module, torch.nn.Conv2d)
    }
    assert len(conv_weights) == 26 and conv_weights <= set(report["loaded"])
    assert not report["unexpected"] and not report["skipped_shape"]  # conv biases left out: BN follows


def test_bad_checkpoints_are_clear_errors():
    with pytest.raises(ValueError, match="VGG-Face"):
        vggface_init_state({"layer1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="fcn_kernel"):  # a 16 px fc6 (512 inputs) is no 7x7 conv6
        vggface_init_state(fake_vggface(512, 64), fcn_kernel=7)


@pytest.mark.parametrize("bgr", [False, True])
def test_conv1_1_folds_the_vggface_input_normalisation(bgr):
    torch.manual_seed(0)
    w, b = torch.randn(64, 3, 3, 3), torch.randn(64)
    mean = torch.tensor(VGGFACE_MEAN_RGB)
    x255 = torch.rand(1, 3, 12, 12) * 255  # an RGB image in 0..255
    v = x255 - mean[:, None, None]  # what VGG-Face's conv1_1 sees (RGB order) ...
    if bgr:
        v = v.flip(1)  # ... or BGR order for the Caffe original
    expected = F.conv2d(v, w, b, padding=1)
    wf, bf = fold_input_normalisation(w, b, mean=VGGFACE_MEAN_RGB, bgr=bgr)
    ours = F.conv2d(x255 / 127.5 - 1.0, wf, bf, padding=1)  # our pipeline's [-1, 1] RGB input
    # equal away from the 1-pixel border (zero padding means a different colour in each space)
    assert torch.allclose(ours[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-2)


def _identity_folders(root, counts: dict[str, int]):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (112, 112), (i, 0, 0)).save(root / name / f"{name}_{i:04d}.jpg")
    return root


def test_occ_train_keeps_identities_with_more_than_n_images(tmp_path):
    src = _identity_folders(tmp_path / "src", {"a": 3, "b": 4, "c": 5, "d": 1})
    builder = get_builder("occ-train")
    kw = dict(src=str(src), aligned=True, keep_clean=False, clean_occluded="1:0", spec=None)
    (job,) = builder.jobs(BuildConfig(), identity_images_over=3, **kw)  # SOIDN: --identity-images-over 50
    assert sorted({p.item.identity for p in job.plan}) == ["b", "c"]  # more than 3: not a (3), not d (1)
    assert len(job.plan) == 4 + 5
    assert job.facts["identity_images_over"] == 3 and job.facts["identities"] == 2
    (everything,) = builder.jobs(BuildConfig(), identity_images_over=None, **kw)
    assert len(everything.plan) == 13 and "identity_images_over" not in everything.facts
    with pytest.raises(ValueError, match="more than 5 images"):
        builder.jobs(BuildConfig(), identity_images_over=5, **kw)


def test_occ_train_filter_from_the_command_line(tmp_path):
    src = _identity_folders(tmp_path / "src", {"a": 2, "b": 3})
    out = tmp_path / "train"
    args = ["build", "occ-train", "--src", str(src), "--aligned", "--ratio", "1:0", "--identity-images-over", "2"]
    result = CliRunner().invoke(main, args + ["--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert {r["identity"] for r in rows} == {"b"} and len(rows) == 3


def test_oma_mask_in_unit_interval_with_face_feature_shape():
    m = _tiny_soidn("model.input_size=[64,64]")
    torch.nn.init.normal_(m.oma.weight, 0, 1.0)  # a non-trivial mask
    top, mask, logits = m.occlusion_mask(torch.randn(2, 3, 64, 64))
    assert mask.shape == top.shape == (2, 512, 2, 2)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.std() > 0
    assert logits.shape == (2, 2, 64, 64)
    # the mask is driven by the segmentation trunk: the face loss reaches it through the OMA
    labels = torch.tensor([0, 1])
    emb = m.backbone.forward_head(top * mask)
    torch.nn.functional.cross_entropy(m.head(emb, labels), labels).backward()
    assert m.seg.stages[4][0].weight.grad.abs().max() > 0


def test_soidn_trains_and_evaluates(tiny_train, tiny_pairs, tmp_path):
    occ, report, _ = train_and_evaluate("soidn", tiny_train, tiny_pairs, tmp_path / "run", "train.steps=8", term="occ")
    assert falls(occ)
    assert report["segmentation"]["miou"] is not None


def test_a_narrow_vgg_for_cpu_scale_runs_keeps_both_trunks_in_step():
    """backbone_kw.width scales every VGG block (64 = VGG16); the FCN-8s trunk and the OMA follow
    the face trunk's width, so SOIDN runs at a sixteenth of the FLOPs for CPU-scale tables."""
    from occsynth_train.models.backbones import create_backbone

    narrow = create_backbone("vgg16", input_size=64, width=16, embedding_size=32, batch_norm=True)
    assert narrow.stage_channels == [16, 32, 64, 128, 128]
    cfg = load_config(CONFIGS / "soidn_tiny_cpu.yaml", [
        "data.train=[x]", "model.input_size=[64, 64]",
        "model.backbone_kw={width: 16, embedding_size: 32, hidden: 64, batch_norm: true}",
    ])  # fmt: skip
    method = create_method("soidn", cfg, num_classes=4)
    face_top, mask, logits = method.occlusion_mask(torch.zeros(2, 3, 64, 64))
    assert face_top.shape[1] == 128 and mask.shape == face_top.shape and logits.shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="width must be >= 1"):
        create_backbone("vgg16", width=0)
