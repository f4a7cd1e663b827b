"""Adversarial inputs (issue: hardening). Each test here failed on the code before its fix.

Files must not run code (checkpoints are loaded as data only) and archives must not write
outside their destination (one safe-extraction helper)."""

from __future__ import annotations

import ast
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from occsynth.io.archive import UnsafeArchiveError, member_path, safe_extract
from occsynth_train.cli import main as train_main
from occsynth_train.config import load_config
from occsynth_train.engine.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from occsynth_train.engine.trainer import init_weights, train
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
