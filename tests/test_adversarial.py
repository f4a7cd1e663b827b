"""Adversarial inputs (issue: hardening). Each test here failed on the code before its fix.

Files must not run code (checkpoints are loaded as data only) and archives must not write
outside their destination (one safe-extraction helper). occsynth: an output folder holds one
build (identity, input content, lock), verify checks samples against their records, values are
checked before any work, errors are one line with exit 2 (usage) or 1 (failed work), odd file
names and layouts do not crash or pollute a build, real occlusions are marked mask-unknown."""

from __future__ import annotations

import ast
import io
import itertools
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from occsynth import contract
from occsynth.benchmarks.identification import ar_mask_known
from occsynth.build.guard import exclusive
from occsynth.cli import main as occsynth_main
from occsynth.inspect.preview import contact_sheet, read_samples
from occsynth.inspect.verify import verify_dataset
from occsynth.io.archive import UnsafeArchiveError, member_path, safe_extract
from occsynth.io.dataset import DatasetError
from occsynth.io.images import encode_image
from occsynth.io.tar import ShardWriter, iter_shard
from occsynth.occluders import Composer, list_occluders, list_presets
from occsynth.occluders.params import SpecError, integer, number, word
from occsynth.occluders.torch import TorchOccluder
from occsynth.sources import SourceError, open_source
from occsynth_train.cli import main as train_main
from occsynth_train.config import load_config
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.data.labels import LabelMap
from occsynth_train.data.loaders import make_train_loader
from occsynth_train.data.shards import ShardInfo, read_index
from occsynth_train.data.stream import BadSamples, ShardStream, _shard_samples
from occsynth_train.engine.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from occsynth_train.engine.trainer import init_weights, train
from occsynth_train.eval.evaluate import evaluate_benchmark
from occsynth_train.methods import create_method

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
PACKAGES = [ROOT / "occsynth", ROOT / "occsynth_train", ROOT / "benchmarks"]


# --- checkpoints: data only -------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 99, "model": {}, "evil": _Payload(marker)}, path)
    pickle.loads(pickle.dumps(_Payload(marker.with_suffix(".probe"))))  # the payload really runs
    assert marker.with_suffix(".probe").exists()
    return path


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and "evil.pt" in message and "weights_only" in message


def test_crafted_checkpoint_refused_on_resume_init_from_and_eval(tiny_train, tiny_pairs, tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    _crafted_checkpoint(run / "checkpoints" / "step_00000099.pt", marker)
    cfg = load_config(TINY, [f"data.train=[{tiny_train}]", f"output={run}", "train.steps=2"])
    with pytest.raises(CheckpointError, match="none of its 1 checkpoint"):
        train(cfg)
    assert not marker.exists()

    fresh = load_config(
        TINY,
        [
            f"data.train=[{tiny_train}]",
            f"output={tmp_path / 'fresh'}",
            f"train.init_from={run / 'checkpoints' / 'step_00000099.pt'}",
        ],
    )
    with pytest.raises(CheckpointError):
        init_weights(create_method("baseline", fresh, num_classes=10), fresh.train.init_from)
    assert not marker.exists()

    good = tmp_path / "good"
    train(load_config(TINY, [f"data.train=[{tiny_train}]", f"output={good}", "train.steps=2"]))
    evil = _crafted_checkpoint(tmp_path / "other.pt", marker)
    result = CliRunner().invoke(
        train_main,
        ["eval", "--model", str(good), "--benchmark", str(tiny_pairs), "--checkpoint", str(evil), "--workers", "0"],
    )
    assert result.exit_code != 0 and not marker.exists()
    assert "Traceback" not in result.output and "refused" in result.output


def test_every_torch_load_is_weights_only():
    offenders = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "load"
                    and getattr(node.func.value, "id", None) == "torch"
                ):
                    kw = {k.arg: k.value for k in node.keywords}
                    value = kw.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_resume_falls_back_to_newest_intact_checkpoint(tiny_train, tmp_path, caplog):
    run = tmp_path / "run"
    over = [
        f"data.train=[{tiny_train}]",
        f"output={run}",
        "train.steps=6",
        "train.ckpt_every=2",
        "train.keep_checkpoints=5",
    ]
    train(load_config(TINY, over), stop_after=4)
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    (run / "checkpoints" / "step_00000005.pt").write_bytes(b"")  # and an empty file
    caplog.set_level(logging.INFO, logger="occsynth_train")
    train(load_config(TINY, over))
    out = caplog.text
    assert "skipped damaged checkpoint step_00000005.pt" in out
    assert "skipped damaged checkpoint step_00000004.pt" in out
    assert "from step_00000002.pt (step 2" in out
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 6
    assert (run / "checkpoints" / "step_00000004.pt.damaged").exists()


def test_zero_byte_checkpoint_is_one_line_error(tmp_path):
    empty = tmp_path / "x.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty file \(0 bytes\)"):
        load_checkpoint(empty)


# --- archives: never outside the destination --------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                tf.addfile(m)
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (("lfw-deepfunneled/../x.jpg", b"x"), "'.' or '..'"),
        (("/tmp/abs.jpg", b"x"), "absolute"),
        (("lfw-deepfunneled//x.jpg", b"x"), "empty path component"),
        (_special("lfw-deepfunneled/a/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
        (_special("lfw-deepfunneled/a/hard.jpg", tarfile.LNKTYPE, "lfw-deepfunneled/a/b.jpg"), "a link"),
        (_special("lfw-deepfunneled/a/dev", tarfile.CHRTYPE), "device"),
        (_special("lfw-deepfunneled/a/fifo", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path, member, why):
    archive = _tar(tmp_path / "a.tgz", [("lfw-deepfunneled/a/ok.jpg", b"ok"), member])
    dest = tmp_path / "out" / "inner"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, dest)
    name = member[0] if isinstance(member, tuple) else member.name
    assert repr(name) in str(err.value) and why in str(err.value)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and dest not in p.parents and p != archive]
    assert outside == []
    assert not Path("/x.jpg").exists() and not Path("/tmp/abs.jpg").exists()


def test_safe_extract_does_not_follow_links_already_in_destination(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "a")
    archive = _tar(tmp_path / "a.tgz", [("a/x.jpg", b"x")])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_member_path_accepts_ordinary_names():
    assert str(member_path("./lfw/a/b.jpg")) == "lfw/a/b.jpg"
    assert str(member_path("lfw/a/")) == "lfw/a"
    assert str(member_path("./")) == "."


def test_lfw_mini_split_refuses_traversal_archive(tmp_path):
    pairs = tmp_path / "fold.txt"
    pairs.write_text("1\t1\nA\t1\t2\nA\t1\tB\t1\n")
    archive = _tar(
        tmp_path / "lfw.tgz",
        [
            ("lfw-deepfunneled/A/A_0001.jpg", b"1"),
            ("lfw-deepfunneled/A/A_0002.jpg", b"2"),
            ("lfw-deepfunneled/../escaped.jpg", b"x"),
            ("lfw-deepfunneled//rooted.jpg", b"x"),
        ],
    )
    out = tmp_path / "split"
    result = CliRunner().invoke(
        train_main, ["lfw-mini-split", "--pairs", str(pairs), "--lfw", str(archive), "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "unsafe member" in result.output
    assert not (tmp_path / "escaped.jpg").exists() and not Path("/rooted.jpg").exists()


def test_no_archive_extract_outside_the_helper():
    """tarfile's extract/extractall (which trust member names) appear only in the helper."""
    offenders = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            if path.name == "archive.py" and path.parent.name == "io":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("extract", "extractall"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# --- occsynth: shared fixtures of the occsynth sections ----------------------------------------
# Small inputs that build in a second with --aligned (no detection): random 112x112 "faces".


def _png(seed: int, size: int = 112) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode_image(rgb, "png")


def _jpg(seed: int, size: int = 112) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode_image(rgb, "jpg", 90)


def _tree(root: Path, files: dict) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _occsynth(*argv: str, debug: bool = False):
    """Run `occsynth ARGV` in-process; stdout and stderr apart (click >= 8.2)."""
    return CliRunner().invoke(occsynth_main, (["--debug"] if debug else []) + [str(a) for a in argv])


ALIGNED = ("--aligned", "--no-cache", "--quiet", "--workers", "1")


def _align(src: Path, out: Path, *extra: str):
    return _occsynth("align", src, "--out", out, *ALIGNED, *extra)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCSYNTH_CACHE", str(tmp_path / "cache"))  # never the user's cache


@pytest.fixture
def aligned_src(tmp_path) -> Path:
    """2 identities x 3 aligned-size images."""
    return _tree(
        tmp_path / "src",
        {f"{who}/{who}_{i:04d}.png": _png(10 * n + i) for n, who in enumerate("AB") for i in (1, 2, 3)},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A finished dataset: 6 samples in 3 shards, block occlusions (read-only: copy to change it)."""
    root = tmp_path_factory.mktemp("built")
    src = _tree(
        root / "src", {f"{who}/{who}_{i:04d}.png": _png(10 * n + i) for n, who in enumerate("AB") for i in (1, 2, 3)}
    )
    result = _align(
        src, root / "ds", "--shard-size", "2", "--occlude", "block(ratio=0.1..0.4, fill=noise)", "--seed", "5"
    )
    assert result.exit_code == 0, result.output
    return root / "ds"


def _copy(ds: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(ds, out)
    return out


# --- occsynth: an output folder holds one build (identity, input content, exclusive lock) -------


def _kill_last_shard(out: Path) -> None:
    """What a build killed before its last shard leaves: no last shard, no manifest."""
    last = sorted(out.glob("*.tar"))[-1]
    last.unlink()
    last.with_name(last.name.replace(".tar", ".stats.json")).unlink()
    (out / "manifest.json").unlink()


def test_resume_from_a_source_with_changed_content_is_refused_naming_the_inputs(aligned_src, tmp_path):
    out = tmp_path / "out"
    assert _align(aligned_src, out, "--shard-size", "2").exit_code == 0
    _kill_last_shard(out)
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    # a re-processed copy: same names, other content (A_0001 is in the finished shard 00000)
    (aligned_src / "A" / "A_0001.png").write_bytes(_png(999))
    result = _align(aligned_src, out, "--shard-size", "2")
    assert result.exit_code == 2, result.output
    assert "other input content" in result.stderr and "1 of the 4 inputs" in result.stderr
    assert "A/A_0001.png" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before  # nothing mixed in
    # the same content again resumes (and finishes) as before
    (aligned_src / "A" / "A_0001.png").write_bytes(_png(1))
    assert _align(aligned_src, out, "--shard-size", "2").exit_code == 0
    assert verify_dataset(out) == []


def test_a_different_build_into_the_folder_is_refused_naming_the_config_key(aligned_src, tmp_path):
    out = tmp_path / "out"
    assert _align(aligned_src, out, "--seed", "7").exit_code == 0
    result = _align(aligned_src, out, "--seed", "8")
    assert result.exit_code == 2
    assert "different build (config seed: 7 -> 8)" in result.stderr


def test_a_second_build_into_a_folder_being_built_fails_at_once(aligned_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # holds the folder's build lock as a running build does
        [
            sys.executable,
            "-c",
            "import sys; from occsynth.build.guard import exclusive\n"
            "with exclusive(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _align(aligned_src, out, "--seed", "3")
        assert result.exit_code == 1
        assert f"is being built by PID {holder.pid}" in result.stderr
        assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()
    finally:
        holder.communicate("")
    assert _align(aligned_src, out, "--seed", "3").exit_code == 0  # the lock went with its process


def test_the_lock_is_reentrant_within_one_process_and_exclusive_across(tmp_path):
    with exclusive(tmp_path / "d"):
        with exclusive(tmp_path / "d"):  # the CLI holds it around a build that takes it again
            pass
        code = (
            "import sys; from occsynth.build.guard import exclusive, BuildLockedError\n"
            "try:\n    exclusive(sys.argv[1]).__enter__()\nexcept BuildLockedError as e:\n    print(e)"
        )
        child = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "d")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert f"is being built by PID {os.getpid()}" in child.stdout


# --- occsynth: verify checks samples against the manifest, the index and the stats --------------


def _rewrite_sample(out: Path, shard: str, key: str, edit) -> None:
    """Change one sample's JSON inside its shard and re-seal the shard's sha256 everywhere, as a
    careless tool (or an interleaved build) would: hashes and members stay consistent."""
    samples = list(iter_shard(out / shard))
    with ShardWriter(out / shard) as writer:
        for k, members in samples:
            if k == key:
                meta = json.loads(members["json"])
                edit(meta)
                members = {**members, "json": json.dumps(meta, sort_keys=True).encode()}
            writer.write(k, members)
        digest = writer.commit()
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry["sha256"] = digest
    (out / "manifest.json").write_text(json.dumps(manifest))
    stats_path = out / shard.replace(".tar", ".stats.json")
    stats = json.loads(stats_path.read_text())
    stats["sha256"] = digest
    stats_path.write_text(json.dumps(stats))


@pytest.mark.parametrize(
    "field, value, finding",
    [
        ("seed", 12345, "seed 12345 is not the one derived from the manifest seed"),
        ("template", "112x96", "template '112x96' differs from the manifest's"),
        ("image_size", [96, 112], "image_size [96, 112] differs from the manifest's"),
        ("identity", "Z", "its line in index.jsonl differs from its json member"),
    ],
)
def test_verify_finds_a_sample_that_disagrees_with_the_manifest_or_index(built, tmp_path, field, value, finding):
    out = _copy(built, tmp_path)
    key = json.loads((out / "index.jsonl").read_text().splitlines()[2])["key"]
    _rewrite_sample(out, "00001.tar", key, lambda meta: meta.__setitem__(field, value))
    problems = verify_dataset(out, decode=False)
    assert any(p.startswith(f"00001.tar:{key}: {finding}") for p in problems), problems
    assert any("stats file differs from its json member" in p for p in problems)


def test_verify_checks_the_stats_files(built, tmp_path):
    out = _copy(built, tmp_path)
    stats = json.loads((out / "00002.stats.json").read_text())
    stats["num_samples"] = 7
    (out / "00002.stats.json").write_text(json.dumps(stats))
    (out / "00001.stats.json").unlink()
    problems = verify_dataset(out)
    assert "00002.stats.json: num_samples 7 differs from manifest.json's 2" in problems
    assert any(p.endswith("00001.stats.json is missing") for p in problems), problems


def _member_offset(path: Path, name: str) -> tuple[int, int]:
    with tarfile.open(path) as tf:
        info = tf.getmember(name)
        return info.offset, info.offset_data


def test_a_corrupt_member_is_named_by_its_key_and_the_rest_of_the_shard_is_checked(built, tmp_path):
    out = _copy(built, tmp_path)
    shard = out / "00000.tar"
    keys = [k for k, _ in iter_shard(shard)]
    data = bytearray(shard.read_bytes())
    _, png = _member_offset(shard, f"{keys[0]}.png")
    data[png + 40 : png + 200] = b"\0" * 160  # inside the first sample's image data
    header, _ = _member_offset(shard, f"{keys[0]}.json")
    data[header : header + 100] = b"\xff" * 100  # the header of its json member: tar would stop here
    _, mask = _member_offset(shard, f"{keys[1]}.mask.png")
    data[mask + 30 : mask + 60] = b"\x01" * 30  # and the second sample's mask
    shard.write_bytes(bytes(data))
    problems = verify_dataset(out)
    assert any(p.startswith("00000.tar: sha256") for p in problems)
    assert f"00000.tar:{keys[0]}: missing member(s) ['json']" in problems
    assert any(p.startswith(f"00000.tar:{keys[1]}: mask.png member cannot be decoded") for p in problems), problems
    assert not any("cannot be read" in p for p in problems)


@pytest.mark.parametrize(
    "manifest",
    ["{not json", "[]", '{"shards": []}', '{"shards": [], "totals": [], "template": "x", "image_size": [1, 1]}'],
)
def test_a_broken_manifest_is_one_fail_line(built, tmp_path, manifest):
    out = _copy(built, tmp_path)
    (out / "manifest.json").write_text(manifest)
    result = _occsynth("verify", out)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL ") and "manifest.json" in lines[0]


def test_the_built_dataset_verifies(built):
    assert verify_dataset(built) == []


# --- occsynth: values are checked before any work ----------------------------------------------


@pytest.mark.parametrize(
    "spec, names",
    [
        ("block(ratio=1.5)", ["'block' parameter 'ratio'", "got 1.5", "[0, 1]"]),
        ("block(ratio=0.1..1.2)", ["'block' parameter 'ratio'", "[0.1, 1.2]", "[0, 1]"]),
        ("block(fill=purple)", ["'fill'", "'purple'", "black, white, noise, mean, texture"]),
        ("object(split=test)", ["'object' parameter 'split'", "train, eval, any"]),
        ("sunglasses(scale=-1)", ["'sunglasses' parameter 'scale'", "(0, inf)"]),
        ("polygon(vertices=2)", ["'vertices'", "an integer in [3, inf)"]),
        ("blob(harmonics=40)", ["'harmonics'", "[1, 16]"]),
        ("grid_cell(cell=25)", ["'cell'", "[0, 24]"]),
        ("mask3d(kind=gas)", ["'kind'", "surgical, n95, kn95, cloth"]),
        ({"name": "ellipse", "params": {"ratio": "1e-3"}}, ["'ratio'", "YAML reads 1e-3 as text"]),
        ({"name": "fit_area", "params": {"occluder": {"name": "block", "params": {"fill": "red"}}}}, ["'fill'"]),
        ("0.5*block | 0.5*pieces(n=0)", ["'pieces' parameter 'n'"]),
    ],
)
def test_occluder_parameters_are_checked_when_the_spec_is_compiled(spec, names):
    with pytest.raises(SpecError) as err:
        Composer(spec)  # compiling only: no image, no rng, no sample
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in names), message


@pytest.mark.parametrize("spec", ["block(ratio=1.5)", "polygon(vertices=2)", "pieces(fill=purple)", "ellipse(angle=x)"])
def test_the_batched_torch_path_checks_the_same_parameters(spec):
    with pytest.raises(SpecError):
        TorchOccluder(spec)


def test_every_occluder_declares_a_schema_that_its_defaults_satisfy():
    for name, cls in list_occluders().items():
        assert set(cls.schema) == set(cls.defaults), name
        for key, value in cls.defaults.items():
            assert cls.schema[key].accepts(value), (name, key, value)
    for preset in list_presets():
        Composer(preset)  # every preset compiles under the checks


def test_param_forms_are_checked_by_type_and_range():
    ratio = number(0.0, 1.0)
    assert ratio.accepts(0.3) and ratio.accepts([0.1, 0.4]) and ratio.accepts({"choice": [0.1, 1], "p": [1, 3]})
    assert not ratio.accepts(True) and not ratio.accepts("0.3") and not ratio.accepts([0.4, 0.1])
    assert not ratio.accepts({"choice": [0.1, 2.0]}) and not ratio.accepts({"choice": [0.1], "p": [-1]})
    assert not ratio.accepts(float("nan")) and not ratio.accepts([0.1, 0.2, 0.3])
    assert integer(3).accepts(5.0) and not integer(3).accepts(5.5)
    fill = word("black", "white")
    assert fill.accepts({"choice": ["black", "white"]}) and not fill.accepts(["black"])
    assert word("a", "b", lists=True).accepts(["a", "b"]) and not word("a", lists=True).accepts([])
    assert number(0.0, lo_open=True, scalar=True).allowed() == "a number in (0, inf)"


def test_a_build_that_makes_no_sample_of_its_plan_fails(tmp_path):
    src = _tree(tmp_path / "src", {f"A/{i}.png": b"not an image" for i in range(3)})
    result = _align(src, tmp_path / "out")
    assert result.exit_code == 1
    assert "none of the 3 planned samples could be made" in result.stderr
    assert (tmp_path / "out" / "failures.jsonl").read_text().count("\n") == 3  # the record is kept


def test_max_failure_rate_makes_too_many_failures_an_error(aligned_src, tmp_path):
    (aligned_src / "B" / "broken.png").write_bytes(b"\x89PNG broken")  # 1 of 7 fails to decode
    result = _align(aligned_src, tmp_path / "strict", "--max-failure-rate", "0.1")
    assert result.exit_code == 1 and "1 of 7 planned samples failed (14.3% > --max-failure-rate 10.0%)" in result.stderr
    assert _align(aligned_src, tmp_path / "lenient", "--max-failure-rate", "0.2").exit_code == 0


def test_yaml_floats_without_a_dot_are_floats_in_the_training_config(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "method: baseline\ndata: {train: [x]}\ntrain: {steps: 1}\n"
        "optim: {lr: 1e-3, milestones: [5e-1], weight_decay: 5e-4, clip_grad: null}\n"
    )
    assert yaml.safe_load(cfg_path.read_text())["optim"]["lr"] == "1e-3"  # the YAML 1.1 reading
    cfg = load_config(cfg_path, ["optim.gamma=2e-1"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == [0.5] and cfg.optim.gamma == 0.2 and cfg.optim.clip_grad is None
    with pytest.raises(ValueError, match=r"optim.lr must be a number, got 'fast'"):
        load_config(cfg_path, ["optim.lr=fast"])
    with pytest.raises(ValueError, match=r"optim.milestones\[1\] must be a number"):
        load_config(cfg_path, ["optim.milestones=[0.5, true]"])


# --- occsynth: one-line errors, exit 2 (bad usage) or 1 (failed work), -h everywhere -----------
# Each entry: (CLI name, argv with {placeholders} from bad_inputs, expected exit code). The CLIs
# are looked up in CLIS; occsynth-train entries can be added to the same list.

CLIS = {"occsynth": occsynth_main}

BAD_INVOCATIONS = [
    ("occsynth", ["align", "{tmp}/nonexistent", "--out", "{out}"], 2),
    ("occsynth", ["align", "{src}"], 2),  # no --out
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "nosuch"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "blok(ratio=0.3)"], 2),  # a typo
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "block(ratio=1.5)"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "block(ratio=-0.1)"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "block(fill=purple)"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "object(split=test)"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "block(ratio=0.3"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "0.5*block | "], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "x*block"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "block(ratio=a..b)"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "{tmp}/missing.yaml"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--occlude", "{badyaml}"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--workers", "0"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--variants", "0"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--shard-size", "0"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--max-failure-rate", "1.5"], 2),
    ("occsynth", ["align", "{src}", "--out", "{out}", "--template", "nosuch"], 2),
    ("occsynth", ["align", "{src}", "--out", "{other_build}", "--seed", "9", *ALIGNED], 2),
    ("occsynth", ["align", "{truncated_tgz}", "--out", "{out}"], 1),
    ("occsynth", ["align", "{symlink_loop}", "--out", "{out}"], 1),
    ("occsynth", ["align", "{undecodable}", "--out", "{out}", *ALIGNED], 1),  # 0 samples
    ("occsynth", ["preview", "{src}", "--out", "{tmp}/p.png"], 1),  # not a dataset
    ("occsynth", ["preview", "{dataset}", "--out", "{tmp}/p.png", "--columns", "0"], 2),
    ("occsynth", ["preview", "{dataset}", "--out", "{tmp}/p.png", "--every", "0"], 2),
    ("occsynth", ["verify", "{non_json_manifest}"], 1),
    ("occsynth", ["card", "{non_json_manifest}"], 1),
    ("occsynth", ["export", "{dataset}", "--out", "{tmp}/e", "--format", "nosuch"], 2),
    ("occsynth", ["occluders", "--family", "nosuch"], 2),
    ("occsynth", ["build", "nosuch"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--ratio", "1.5"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--ratio", "-0.1"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--spread", "0.6"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--folds", "7"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--folds", "x"], 2),
    ("occsynth", ["build", "lfw-occ", "--lfw", "{lfw}", "--pairs", "{bad_pairs}", "--out", "{out}"], 1),
    ("occsynth", ["build", "lfw-block", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--repeats", "0"], 2),
    (
        "occsynth",
        ["build", "lfw-block", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--levels", "150"],
        2,
    ),
    (
        "occsynth",
        ["build", "lfw-block", "--lfw", "{lfw}", "--pairs", "{pairs}", "--out", "{out}", "--fill", "purple"],
        2,
    ),
    ("occsynth", ["build", "pdsn-pairs", "--src", "{src}", "--out", "{out}", "--variants", "0"], 2),
    ("occsynth", ["build", "occ-train", "--src", "{src}", "--out", "{out}", "--occlude", "block(ratio=2)"], 2),
    ("occsynth", ["build", "ar", "--ar", "{src}", "--out", "{out}", "--protocols", "3"], 2),
    ("occsynth", ["make-templates", "--variants", "0"], 2),
    ("occsynth", ["render-masks", "--size", "0"], 2),
]


@pytest.fixture
def bad_inputs(tmp_path, aligned_src, built) -> dict[str, str]:
    lfw = _tree(tmp_path / "lfw", {f"{n}/{n}_{i:04d}.jpg": _jpg(i) for n in ("Ann", "Bob") for i in (1, 2)})
    pairs = tmp_path / "fold.txt"
    pairs.write_text("1\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")  # one fold (fold 0) of 1 + 1 pairs
    bad_pairs = tmp_path / "bad_pairs.txt"
    bad_pairs.write_text("1\t1\nAnn\tone\t2\nAnn\t1\tBob\t1\n")
    good = _write_gz(tmp_path / "ok.tgz", {f"A/{i}.png": _png(i) for i in range(20)})
    truncated = tmp_path / "cut.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    loop = _tree(tmp_path / "loop", {"A/a.png": _png(1)})
    os.symlink(loop, loop / "A" / "again")
    non_json = _copy(built, tmp_path)
    (non_json / "manifest.json").write_text("{not json")
    other = tmp_path / "other"
    assert _align(aligned_src, other, "--seed", "1").exit_code == 0
    badyaml = tmp_path / "spec.yaml"
    badyaml.write_text("name: block\nparams: {ratio: [0.1\n")
    return {
        "tmp": str(tmp_path),
        "out": str(tmp_path / "out"),
        "src": str(aligned_src),
        "dataset": str(built),
        "lfw": str(lfw),
        "pairs": str(pairs),
        "bad_pairs": str(bad_pairs),
        "truncated_tgz": str(truncated),
        "symlink_loop": str(loop),
        "undecodable": str(_tree(tmp_path / "undecodable", {"A/x.png": b"no image", "A/y.png": b"nor this"})),
        "non_json_manifest": str(non_json),
        "other_build": str(other),
        "badyaml": str(badyaml),
    }


def _write_gz(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_there_are_enough_bad_invocations():
    assert len([b for b in BAD_INVOCATIONS if b[0] == "occsynth"]) >= 25


@pytest.mark.parametrize("cli, argv, code", BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_invocations_fail_with_one_line_and_the_right_exit_code(bad_inputs, cli, argv, code):
    result = CliRunner().invoke(CLIS[cli], [a.format(**bad_inputs) for a in argv])
    assert_one_error_line(result, code)


def assert_one_error_line(result, code: int) -> None:
    """Non-zero exit with the expected code, no traceback, at most 3 lines on stderr, the last an error."""
    stderr = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert 1 <= len(stderr) <= 3 and stderr[-1].startswith(("Error: ", "FAIL ")), result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_debug_shows_the_traceback_instead(aligned_src, tmp_path):
    result = _occsynth("align", aligned_src, "--out", tmp_path / "o", "--occlude", "block(ratio=2)", debug=True)
    assert isinstance(result.exception, SpecError)  # raised, not turned into one line
    result = _occsynth("align", tmp_path / "nope", "--out", tmp_path / "o", debug=True)
    assert isinstance(result.exception, SourceError)


def _commands(group: click.Group, prefix: list[str], ctx: click.Context) -> list[list[str]]:
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        found.append(prefix + [name])
        if isinstance(command, click.Group):
            found += _commands(command, prefix + [name], click.Context(command, parent=ctx))
    return found


def test_dash_h_works_for_every_command():
    commands = [[]] + _commands(occsynth_main, [], click.Context(occsynth_main))
    assert ["build", "lfw-occ"] in commands and ["verify"] in commands
    for argv in commands:
        result = CliRunner().invoke(occsynth_main, argv + ["-h"])
        assert result.exit_code == 0 and "Usage:" in result.output, argv


# --- occsynth: file names that are not UTF-8 ---------------------------------------------------


def test_non_utf8_names_in_a_folder_become_items_with_ascii_safe_ids(tmp_path):
    root = tmp_path / "src"
    os.makedirs(os.fsencode(root / "caf") + b"\xe9")
    (root / "Bob").mkdir()
    for rel, seed in ((b"caf\xe9/caf\xe9_1.png", 1), (b"Bob/b\xff.png", 2), (b"Bob/b\\xff.png", 3)):
        Path(os.fsdecode(os.fsencode(root) + b"/" + rel)).write_bytes(_png(seed))
    source = open_source(root)
    ids = [item.sample_id for item in source.items()]
    assert ids == ["Bob/b\\xff.png", "Bob/b\\xff.png~1", "caf\\xe9/caf\\xe9_1.png"]  # unique, printable
    assert [source.read(item) for item in source.items()][1] == _png(2)  # read by the real name
    out = tmp_path / "out"
    result = _align(root, out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rows] == ids and {r["identity"] for r in rows} == {"Bob", "caf\\xe9"}
    assert all(r["key"].isascii() for r in rows) and len({r["key"] for r in rows}) == 3
    assert verify_dataset(out) == []


def test_non_utf8_names_in_a_tar_become_items(tmp_path):
    archive = tmp_path / "old.tar"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tf:
        for name, seed in (("w/Jos\xe9/Jos\xe9_0001.png", 1), ("w/Ann/Ann_0001.png", 2)):
            data = _png(seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    source = open_source(archive)
    assert [(i.sample_id, i.identity) for i in source.items()] == [
        ("Ann/Ann_0001.png", "Ann"),
        ("Jos\\xe9/Jos\\xe9_0001.png", "Jos\\xe9"),
    ]
    assert _align(archive, tmp_path / "out").exit_code == 0
    assert verify_dataset(tmp_path / "out") == []


# --- occsynth: identity folders ignore top-level files ------------------------------------------


def test_top_level_files_beside_identity_folders_are_ignored_and_listed(tmp_path):
    files = {f"{n}/{n}_{i:04d}.png": _png(i) for n in ("Ann", "Bob") for i in (1, 2)}
    root = _tree(tmp_path / "mfr2", {**files, "pairs.txt": b"Ann 1 2\n", "mfr2_labels.txt": b"Ann 0\n"})
    source = open_source(root)
    assert sorted(source.identities()) == ["Ann", "Bob"] and len(source) == 4
    assert source.ignored == ("mfr2_labels.txt", "pairs.txt")
    out = tmp_path / "out"
    assert _align(root, out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["ignored"] == ["mfr2_labels.txt", "pairs.txt"]
    assert manifest["totals"] == {"planned": 4, "samples": 4, "failures": 0, "shards": 1}
    flat = open_source(_tree(tmp_path / "flat", {"x.png": _png(1), "y.png": _png(2)}))
    assert flat.identities() == ["x", "y"] and flat.ignored == ()  # no identity folders: files are identities


# --- occsynth: real occlusions have unknown masks (MFR2, AR) ------------------------------------


def test_mfr2_samples_are_marked_mask_unknown_in_the_contract_card_and_preview(tmp_path, sk_faces):
    faces = list(sk_faces.values())[:2]
    files = {
        f"P{n}/P{n}_{i + 1:04d}.png": encode_image(face[i], "png") for n, face in enumerate(faces) for i in range(2)
    }
    root = _tree(tmp_path / "mfr2", {**files, "pairs.txt": b"P0 1 2\nP0 1 P1 1\n"})
    out = tmp_path / "out"
    result = _occsynth(
        "build",
        "mfr2",
        "--mfr2",
        root,
        "--pairs",
        root / "pairs.txt",
        "--out",
        out,
        "--workers",
        "1",
        "--quiet",
        "--no-cache",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r[contract.MASK_KNOWN] is False for r in rows)
    assert not any(contract.mask_known(r) for r in rows)
    assert verify_dataset(out) == []
    card = (out / "card.md").read_text()
    assert "real occlusions, no pixel masks" in card.lower() and "every sample is clean" not in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["mask_unknown"] == 4
    assert "P0_0001" not in json.dumps(manifest["source"].get("ignored", []))
    assert manifest["source"]["ignored"] == ["pairs.txt"]
    samples = read_samples(out, limit=1)
    sheet = contact_sheet(samples, columns=1)
    half = sheet.shape[1] // 2
    assert np.array_equal(sheet[:128, :half], sheet[:128, half:])  # no overlay claiming a clean face


def test_ar_marks_only_its_sunglasses_and_scarf_images_mask_unknown():
    assert [ar_mask_known(f"m-001-{n:02d}.bmp") for n in (1, 7, 8, 10, 11, 13, 14, 20, 21, 26)] == [
        True, True, False, False, False, False, True, True, False, False,
    ]  # fmt: skip
    synthetic = {"key": "0", "occluders": [], "occlusion_ratio": 0.0}
    assert contract.mask_known(synthetic) and not contract.mask_known({**synthetic, contract.MASK_KNOWN: False})


# --- occsynth-train: one-line errors, corrupt samples, incomplete indexes, unknown masks ------
# (Each test here failed before its fix: a zero-byte checkpoint printed "Aborted!", a corrupt
# image stopped training without naming shard or key, real-occlusion samples were scored and
# trained on as if their empty masks were true.)

CONFIGS = ROOT / "configs"


def _rewrite_shard(path: Path, change) -> None:
    """Rewrite a shard in place; change(member name, bytes) -> new bytes, or None to drop it."""
    with tarfile.open(path) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            new = change(name, data)
            if new is not None:
                info = tarfile.TarInfo(name)
                info.size = len(new)
                tf.addfile(info, io.BytesIO(new))


def _corrupt_copy(src: Path, dest: Path, member: str = "000005.png", data: bytes = b"not a png") -> Path:
    """A copy of dataset `src` whose `member` (in the first shard) holds `data`."""
    shutil.copytree(src, dest)
    _rewrite_shard(dest / "00000.tar", lambda name, old: data if name == member else old)
    return dest


def _mark_masks_unknown(root: Path, keys=None) -> Path:
    """Mark samples (all, or `keys`) as real occlusions without pixel masks, in the json members
    and index.jsonl alike; their mask members are left as they are (they must not be read)."""

    def mark(meta: dict) -> dict:
        return {**meta, contract.MASK_KNOWN: False} if keys is None or meta["key"] in keys else meta

    for shard in sorted(root.glob("*.tar")):
        _rewrite_shard(shard, lambda name, d: json.dumps(mark(json.loads(d))).encode() if name.endswith(".json") else d)
    index = root / "index.jsonl"
    rows = [mark(json.loads(line)) for line in index.read_text().splitlines() if line.strip()]
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def train_bad_inputs(tmp_path_factory, tiny_train, tiny_pairs) -> dict[str, str]:
    """Paths the bad invocations refer to: {cfg} {ds} {pairs} {run} (a trained run) and {bad}/..."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "unknown_key.yaml").write_text(TINY.read_text() + "\nlearning_rate: 0.1\n")
    (bad / "list.yaml").write_text("- 1\n- 2\n")
    (bad / "broken.yaml").write_text("data: {train: [\n")
    (bad / "notdataset").mkdir()
    (bad / "notdataset" / "readme.txt").write_text("not a dataset\n")
    (bad / "zero.pt").write_bytes(b"")
    run = bad / "run"
    train(load_config(TINY, [f"data.train=[{tiny_train}]", f"output={run}", "train.steps=2"]))
    ckpt = list_checkpoints(run)[-1].read_bytes()
    (bad / "cut.pt").write_bytes(ckpt[: len(ckpt) // 2])
    for name, data in (("zero_run", b""), ("cut_run", ckpt[: len(ckpt) // 3])):
        (bad / name / "checkpoints").mkdir(parents=True)
        (bad / name / "checkpoints" / "step_00000002.pt").write_bytes(data)
    _corrupt_copy(tiny_train, bad / "corrupt")
    _corrupt_copy(tiny_pairs, bad / "corrupt_bench", member="00000a.png")
    shutil.copytree(tiny_pairs, bad / "short_index")
    lines = (bad / "short_index" / "index.jsonl").read_text().splitlines(keepends=True)
    (bad / "short_index" / "index.jsonl").write_text("".join(lines[:3] + lines[4:]))
    (bad / "pairs_bad.txt").write_text("1\t1\nA\tone\t2\n")
    (bad / "pairs_ok.txt").write_text("1\t1\nA\t1\t2\nA\t1\tB\t1\n")
    (bad / "notarchive.tgz").write_bytes(b"plain text, no archive\n")
    _tar(bad / "lfw.tgz", [("lfw-deepfunneled/A/A_0001.jpg", b"1"), ("lfw-deepfunneled/A/A_0002.jpg", b"2")])
    return {"cfg": str(TINY), "ds": str(tiny_train), "pairs": str(tiny_pairs), "run": str(run), "bad": str(bad)}


_TRAIN = ["baseline", "--config", "{cfg}", "--set", "data.train=[{ds}]", "--output", "{out}"]
_EVAL = ["eval", "--model", "{run}", "--workers", "0"]

# (argv, exit code): 2 = bad usage (options, config, --set; nothing ran), 1 = failed work
TRAIN_BAD_INVOCATIONS = [
    (["nosuch"], 2),
    (["baseline"], 2),
    (["baseline", "--config", "{bad}/missing.yaml"], 2),
    (["baseline", "--config", "{bad}"], 2),
    (["baseline", "--config", "{bad}/unknown_key.yaml"], 2),
    (["baseline", "--config", "{bad}/list.yaml"], 2),
    (["baseline", "--config", "{bad}/broken.yaml"], 2),
    (["baseline", "--config", "{cfg}", "--set", "optim.lr"], 2),
    (["baseline", "--config", "{cfg}", "--set", "nosuch.key=1"], 2),
    (["baseline", "--config", "{cfg}"], 2),  # data.train is empty
    ([*_TRAIN, "--set", "train.precision=fp8"], 2),
    ([*_TRAIN, "--set", "data.batch_size=0"], 2),
    ([*_TRAIN, "--set", "data.max_bad_share=2"], 2),
    ([*_TRAIN, "--set", "train.steps=null"], 2),
    ([*_TRAIN, "--stop-after", "x"], 2),
    ([*_TRAIN, "--stop-after", "0"], 2),
    ([*_TRAIN, "--bogus"], 2),
    (["-v", "--quiet", "methods"], 2),
    ([*_TRAIN, "--set", "data.train=[{bad}/missing]"], 1),
    ([*_TRAIN, "--set", "data.train=[{bad}/notdataset]"], 1),
    ([*_TRAIN, "--set", "data.train=[{bad}/short_index]"], 1),
    ([*_TRAIN, "--set", "model.backbone=nosuch"], 2),  # an unknown name is bad usage
    ([*_TRAIN, "--set", "train.init_from={bad}/zero.pt"], 1),
    ([*_TRAIN, "--set", "train.init_from={bad}/missing.pt"], 1),
    ([*_TRAIN, "--set", "data.train=[{bad}/corrupt]"], 1),  # one corrupt image of 50 > 1 %
    (["baseline", "--config", "{cfg}", "--set", "data.train=[{ds}]", "--output", "{bad}/zero_run"], 1),
    (["baseline", "--config", "{cfg}", "--set", "data.train=[{ds}]", "--output", "{bad}/cut_run"], 1),
    (["eval"], 2),
    (["eval", "--model", "{bad}/missing", "--benchmark", "{pairs}"], 2),
    (["eval", "--model", "{run}", "--benchmark", "{bad}/missing"], 2),
    ([*_EVAL, "--benchmark", "{pairs}", "--checkpoint", "{bad}/missing.pt"], 2),
    ([*_EVAL, "--benchmark", "{pairs}", "--batch-size", "0"], 2),
    (["eval", "--model", "{bad}/notdataset", "--benchmark", "{pairs}", "--workers", "0"], 1),
    (["eval", "--model", "{bad}/zero_run", "--benchmark", "{pairs}", "--workers", "0"], 1),
    ([*_EVAL, "--benchmark", "{bad}/notdataset"], 1),
    ([*_EVAL, "--benchmark", "{pairs}", "--checkpoint", "{bad}/zero.pt"], 1),
    ([*_EVAL, "--benchmark", "{pairs}", "--checkpoint", "{bad}/cut.pt"], 1),
    ([*_EVAL, "--benchmark", "{bad}/short_index"], 1),
    ([*_EVAL, "--benchmark", "{ds}"], 1),  # a training set: neither pairs nor protocol
    (["eval", "--model", "{run}", "--benchmark", "{bad}/corrupt_bench", "--workers", "1"], 1),  # in a worker
    (["lfw-mini-split", "--lfw", "{bad}/lfw.tgz", "--out", "{out}"], 2),
    (["lfw-mini-split", "--pairs", "{bad}/pairs_bad.txt", "--lfw", "{bad}/lfw.tgz", "--out", "{out}"], 1),
    (["lfw-mini-split", "--pairs", "{bad}/pairs_ok.txt", "--lfw", "{bad}/notarchive.tgz", "--out", "{out}"], 1),
    (
        [
            "lfw-mini-split",
            "--pairs",
            "{bad}/pairs_ok.txt",
            "--lfw",
            "{bad}/lfw.tgz",
            "--out",
            "{out}",
            "--test-fold",
            "5",
        ],
        1,
    ),
]


@pytest.mark.parametrize(
    "argv, code", TRAIN_BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_occsynth_train_bad_invocation_is_one_error_line(train_bad_inputs, tmp_path, argv, code):
    args = [a.format(**train_bad_inputs, out=tmp_path / "out") for a in argv]
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    assert_one_error_line(result, code)


def test_occsynth_train_zero_byte_checkpoint_through_the_real_command(train_bad_inputs):
    """The installed entry point (not the test runner): one line, no "Aborted!"; --debug gives
    the traceback."""
    bad = train_bad_inputs["bad"]
    argv = [
        "eval",
        "--model",
        train_bad_inputs["run"],
        "--benchmark",
        train_bad_inputs["pairs"],
        "--checkpoint",
        f"{bad}/zero.pt",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "occsynth_train.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1 and "Aborted" not in done.stderr
    assert done.stderr.splitlines() == [f"Error: {bad}/zero.pt: empty file (0 bytes), not a checkpoint"]
    debug = CliRunner().invoke(train_main, ["--debug", *argv])
    assert isinstance(debug.exception, CheckpointError)


def test_corrupt_sample_is_skipped_named_and_counted(train_bad_inputs, tiny_train, caplog):
    corrupt = Path(train_bad_inputs["bad"]) / "corrupt"
    labels = LabelMap.from_datasets([corrupt])
    stream = ShardStream([corrupt], labels, 4, seed=3, shuffle_buffer=8)
    batches = list(itertools.islice(iter(stream), 25))  # 100 samples: two epochs of 49 good ones and more
    keys = [k for b in batches for k in b["keys"]]
    skipped = [s for b in batches for s in b["skipped"]]
    all_keys = {m["key"] for m in read_index(tiny_train)}
    assert set(keys[:49]) == all_keys - {"000005"} and "000005" not in keys  # the whole epoch minus one
    records = {(Path(s["shard"]).name, s["key"], s["reason"]) for s in skipped}
    assert records == {("00000.tar", "000005", "cannot decode image member")} and 2 <= len(skipped) <= 3
    caplog.set_level(logging.WARNING, logger="occsynth_train")
    account = BadSamples(0.05, stream.num_samples)  # 1 distinct of 50 <= 2.5: go on
    assert not any(account.account(b) for b in batches)
    assert account.per_slot == {0: len(skipped)} and len(account.distinct) == 1
    warned = [r.getMessage() for r in caplog.records if "skipped training sample" in r.getMessage()]
    assert len(warned) == 1 and "000005" in warned[0] and str(corrupt / "00000.tar") in warned[0]  # once
    strict = BadSamples(0.0, stream.num_samples)  # the first one stops
    first = next(i for i, b in enumerate(batches) if b["skipped"])
    assert [strict.account(b) for b in batches] == [False] * first + [True] * (len(batches) - first)
    message = str(strict.error())
    assert "\n" not in message and "000005 in" in message and "00000.tar" in message and "max_bad_share" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_exactly_past_skipped_samples(train_bad_inputs, workers):
    """Skipping is a function of the bytes; a resumed stream given the per-slot counts of the
    consumed batches continues exactly (without them it would repeat samples)."""
    corrupt = Path(train_bad_inputs["bad"]) / "corrupt"
    labels = LabelMap.from_datasets([corrupt])

    def batches(n, **kw):
        stream = ShardStream([corrupt], labels, 4, seed=3, shuffle_buffer=8, **kw)
        return list(itertools.islice(iter(make_train_loader(stream, workers)), n))

    straight = batches(27)
    account = BadSamples(0.5, 50)
    for b in straight[:20]:  # 80 samples: every slot is past its first epoch, so past the bad sample
        account.account(b)
    assert sum(account.per_slot.values()) >= 1 and account.slots == max(1, workers)
    saved = BadSamples.merge([account.state()])
    assert [b["keys"] for b in batches(7, samples_seen=20 * 4, bad_seen=saved)] == [b["keys"] for b in straight[20:]]
    assert [b["keys"] for b in batches(7, samples_seen=20 * 4)] != [b["keys"] for b in straight[20:]]


def test_training_resume_is_exact_with_a_corrupt_sample(train_bad_inputs, tmp_path):
    corrupt = Path(train_bad_inputs["bad"]) / "corrupt"
    common = [f"data.train=[{corrupt}]", "train.steps=8", "train.ckpt_every=100", "data.max_bad_share=0.05"]
    straight = train(load_config(TINY, [*common, f"output={tmp_path / 'a'}"]))
    train(load_config(TINY, [*common, f"output={tmp_path / 'b'}"]), stop_after=7)  # past epoch 1 (56 > 49)
    at7 = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert at7["bad_samples"]["per_slot"] == {0: 1} and at7["bad_samples"]["slots"] == 1
    assert at7["bad_samples"]["distinct"] == [[f"{corrupt / '00000.tar'}:000005"]]
    resumed = train(load_config(TINY, [*common, f"output={tmp_path / 'b'}"]))
    a = load_checkpoint(list_checkpoints(straight)[-1])
    b = load_checkpoint(list_checkpoints(resumed)[-1])
    assert a["step"] == b["step"] == 8 and a["samples_seen"] == b["samples_seen"] == 64
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_bad_json_and_a_cut_shard_are_skipped_in_place(tiny_train, tmp_path, caplog):
    ds = tmp_path / "ds"
    _corrupt_copy(tiny_train, ds, member="000003.json", data=b"{not json")
    shard = ds / "00002.tar"  # keys 000032..000047
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 6 // 10])
    raw = list(_shard_samples(ShardInfo(str(shard), 16)))
    read = [r for r in raw if "__bad__" not in r]
    assert len(raw) == 16 and 0 < len(read) < 16  # the manifest's count, placeholders for the rest
    cut = {r["__key__"] for r in raw if "__bad__" in r}
    assert cut == {f"#{i}" for i in range(len(read), 16)}
    good = {m["key"] for m in read_index(tiny_train)} - {"000003"} - {f"{32 + i:06d}" for i in range(len(read), 16)}
    stream = ShardStream([ds], LabelMap.from_datasets([ds]), 4, seed=1, shuffle_buffer=8)
    seen, skipped = set(), {}
    account = BadSamples(0.9, stream.num_samples)
    caplog.set_level(logging.WARNING, logger="occsynth_train")
    for batch in itertools.islice(iter(stream), 40):
        seen.update(batch["keys"])
        skipped.update({(Path(s["shard"]).name, s["key"]): s["reason"] for s in batch["skipped"]})
        account.account(batch)
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 2  # the bad json, and the cut shard once (not once per lost sample)
    assert warned[0].startswith(f"skipped the samples of {shard} from position {len(read)} on: the shard")
    assert warned[1].startswith(f"skipped training sample 000003 in {ds / '00000.tar'}: json member")
    assert seen == good
    assert set(skipped) == {("00000.tar", "000003")} | {("00002.tar", k) for k in cut}
    assert skipped[("00000.tar", "000003")].startswith("json member")
    assert all("shard" in skipped[("00002.tar", k)] for k in cut)


def test_incomplete_or_mixed_index_is_one_clear_error(tiny_pairs, tmp_path):
    ok = KeyedDataset(tiny_pairs)
    lines = (tiny_pairs / "index.jsonl").read_text().splitlines(keepends=True)
    cases = {
        "missing": (lines[:3] + lines[4:], r"no line for 1 sample\(s\) of the shards \(first: '00001b'\)"),
        "duplicate": (lines + lines[5:6], r"key '00002b' is listed twice"),
        "foreign": (lines + [lines[0].replace('"00000a"', '"99999a"')], r"1 key\(s\) that no shard holds"),
    }
    for name, (content, message) in cases.items():
        root = tmp_path / name
        shutil.copytree(tiny_pairs, root)
        (root / "index.jsonl").write_text("".join(content))
        with pytest.raises(DatasetError, match=message):
            KeyedDataset(root)
        if name == "missing":
            with pytest.raises(DatasetError, match="lines for the 80 samples"):
                LabelMap.from_datasets([root])  # training: the cheap count check
            (root / "index.jsonl").unlink()  # the documented way out: metadata from the json members
            assert KeyedDataset(root).metas == ok.metas


def test_corrupt_benchmark_image_names_shard_and_key(train_bad_inputs):
    """Evaluation does not skip (a benchmark is scored whole): the error names shard and key,
    also when a DataLoader worker raised it (torch puts the worker's traceback in the message)."""
    bench = Path(train_bad_inputs["bad"]) / "corrupt_bench"
    ds = KeyedDataset(bench)
    with pytest.raises(DatasetError, match=r"corrupt_bench/00000.tar: sample '00000a': cannot decode image member"):
        ds[ds.position["00000a"]]
    argv = ["eval", "--model", train_bad_inputs["run"], "--benchmark", str(bench), "--workers", "1"]
    result = CliRunner().invoke(train_main, argv, catch_exceptions=False)
    # progress lines (model, benchmark) may come first; the error is the one last line
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.stderr and len(lines) <= 3
    assert lines[-1] == (
        f"Error: {bench}/00000.tar: sample '00000a': cannot decode image member (in DataLoader worker process 0)"
    )


def test_unknown_masks_are_refused_where_masks_are_needed(tiny_train, tiny_pairs, tmp_path):
    """Real-occlusion samples (mask_known: false) train and verify like any others, but are
    refused by what needs true masks: segmentation training, PDSN's true test masks; mask IoU
    leaves them out and says so."""
    real_train = _mark_masks_unknown(shutil.copytree(tiny_train, tmp_path / "real_train"))
    with pytest.raises(ValueError, match=r"real_train: 50 sample\(s\) have no pixel masks .*method 'msml'"):
        train(load_config(CONFIGS / "msml_tiny_cpu.yaml", [f"data.train=[{real_train}]", f"output={tmp_path / 'm'}"]))
    assert not list_checkpoints(tmp_path / "m")
    train(load_config(TINY, [f"data.train=[{real_train}]", f"output={tmp_path / 'b'}", "train.steps=1"]))
    assert len(list_checkpoints(tmp_path / "b")) == 1

    side_a = {m["key"] for m in read_index(tiny_pairs) if m["key"].endswith("a")}
    real_pairs = _mark_masks_unknown(shutil.copytree(tiny_pairs, tmp_path / "real_pairs"), side_a)
    ds = KeyedDataset(real_pairs)
    assert sum(ds.mask_known) == 40 and not ds[ds.position["00000a"]]["mask"].any()  # not the stored mask
    cpu = torch.device("cpu")
    msml = create_method("msml", load_config(CONFIGS / "msml_tiny_cpu.yaml", ["data.train=[x]"]), num_classes=5)
    report, _ = evaluate_benchmark(msml.eval(), real_pairs, cpu, 32, 0)
    assert report["verification"]["pairs"] == 40
    assert report["segmentation"]["images_with_occlusion"] == 40  # the 40 samples with true masks
    assert report["segmentation"]["not_scored"] == "40 samples without pixel masks (real occlusions)"
    pdsn_cfg = load_config(CONFIGS / "pdsn_tiny_cpu.yaml", ["data.train=[x]", "method_kw.occlusion_source=gt"])
    pdsn = create_method("pdsn", pdsn_cfg, num_classes=5)
    with pytest.raises(ValueError, match=r"real_pairs: 40 of 80 samples have no pixel masks .*'pdsn'"):
        evaluate_benchmark(pdsn.eval(), real_pairs, cpu, 32, 0)
    report, _ = evaluate_benchmark(pdsn.eval(), tiny_pairs, cpu, 32, 0)  # exact masks: accepted
    assert report["test_masks"] == "ground truth"
