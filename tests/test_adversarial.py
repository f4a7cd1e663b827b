"""Adversarial inputs (issue: hardening). Each test here failed on the code before its fix.

Files must not run code (checkpoints are loaded as data only) and archives must not write
outside their destination (one safe-extraction helper)."""

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

import pytest
import torch
from click.testing import CliRunner

from occsynth.io.archive import UnsafeArchiveError, member_path, safe_extract
from occsynth.io.dataset import DatasetError
from occsynth_train.cli import main as train_main
from occsynth_train.config import load_config
from occsynth_train.data.keyed import KeyedDataset
from occsynth_train.data.labels import LabelMap
from occsynth_train.data.loaders import make_train_loader
from occsynth_train.data.shards import MASK_KNOWN_FIELD, ShardInfo, read_index
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
        return {**meta, MASK_KNOWN_FIELD: False} if keys is None or meta["key"] in keys else meta

    for shard in sorted(root.glob("*.tar")):
        _rewrite_shard(shard, lambda name, d: json.dumps(mark(json.loads(d))).encode() if name.endswith(".json") else d)
    index = root / "index.jsonl"
    rows = [mark(json.loads(line)) for line in index.read_text().splitlines() if line.strip()]
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_train, tiny_pairs) -> dict[str, str]:
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
    ([*_TRAIN, "--set", "model.backbone=nosuch"], 1),
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
def test_occsynth_train_bad_invocation_is_one_error_line(bad_inputs, tmp_path, argv, code):
    args = [a.format(**bad_inputs, out=tmp_path / "out") for a in argv]
    result = CliRunner().invoke(train_main, args, catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("Error: "), result.stderr


def test_occsynth_train_zero_byte_checkpoint_through_the_real_command(bad_inputs):
    """The installed entry point (not the test runner): one line, no "Aborted!"; --debug gives
    the traceback."""
    bad = bad_inputs["bad"]
    argv = ["eval", "--model", bad_inputs["run"], "--benchmark", bad_inputs["pairs"], "--checkpoint", f"{bad}/zero.pt"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "occsynth_train.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1 and "Aborted" not in done.stderr
    assert done.stderr.splitlines() == [f"Error: {bad}/zero.pt: empty file (0 bytes), not a checkpoint"]
    debug = CliRunner().invoke(train_main, ["--debug", *argv])
    assert isinstance(debug.exception, CheckpointError)


def test_corrupt_sample_is_skipped_named_and_counted(bad_inputs, tiny_train, caplog):
    corrupt = Path(bad_inputs["bad"]) / "corrupt"
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
def test_stream_resumes_exactly_past_skipped_samples(bad_inputs, workers):
    """Skipping is a function of the bytes; a resumed stream given the per-slot counts of the
    consumed batches continues exactly (without them it would repeat samples)."""
    corrupt = Path(bad_inputs["bad"]) / "corrupt"
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


def test_training_resume_is_exact_with_a_corrupt_sample(bad_inputs, tmp_path):
    corrupt = Path(bad_inputs["bad"]) / "corrupt"
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


def test_corrupt_benchmark_image_names_shard_and_key(bad_inputs):
    """Evaluation does not skip (a benchmark is scored whole): the error names shard and key,
    also when a DataLoader worker raised it (torch puts the worker's traceback in the message)."""
    bench = Path(bad_inputs["bad"]) / "corrupt_bench"
    ds = KeyedDataset(bench)
    with pytest.raises(DatasetError, match=r"corrupt_bench/00000.tar: sample '00000a': cannot decode image member"):
        ds[ds.position["00000a"]]
    argv = ["eval", "--model", bad_inputs["run"], "--benchmark", str(bench), "--workers", "1"]
    result = CliRunner().invoke(train_main, argv, catch_exceptions=False)
    assert result.exit_code == 1 and result.stderr.splitlines() == [
        f"Error: {bench}/00000.tar: sample '00000a': cannot decode image member (in DataLoader worker process 0)"
    ]


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
