"""The wheel works without the source tree: built from this checkout, installed non-editable into
a fresh virtual environment (system site-packages for the heavy dependencies, --no-deps for
occsynth itself), and run from a folder outside the checkout: the demo, an object-occluder
align and a small named build. Also: the declared dependencies are exactly the imported ones."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from occsynth.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("occsynth", "occsynth_train")

# import name -> distribution name, where they differ
DIST_OF = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "facenet_pytorch": "facenet-pytorch",
    "sklearn": "scikit-learn",
}
# imported only behind a try/except that explains what to install (or a compatibility shim)
OPTIONAL_IMPORTS = {
    "torchvision": "facenet-pytorch's own dependency; occsynth.faces._torchvision_compat"
    " stands in when it cannot be imported"
}


def _third_party_imports() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.add(top)
    return found


def _requirement_name(req: str) -> str:
    for sep in "<>=!~[; (":
        req = req.split(sep)[0]
    return req.strip().lower().replace("_", "-")


def _requires() -> list[str]:
    """The requirements this checkout declares, in importlib.metadata's form ("name>=1; extra ==
    'x'"), read from its pyproject.toml: the installed metadata belongs to whichever checkout was
    pip-installed (editable) and lags behind a branch that adds an extra. Falls back to the
    installed metadata where tomllib is missing (Python 3.10)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return metadata.requires("occsynth") or []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return list(project["dependencies"]) + [f'{r}; extra == "{name}"' for name, reqs in extras.items() for r in reqs]


def test_declared_dependencies_equal_the_imported_ones():
    requires = _requires()
    core = {_requirement_name(r) for r in requires if "extra ==" not in r}
    extras = {_requirement_name(r) for r in requires if "extra ==" in r}
    imported = {DIST_OF.get(m, m).lower().replace("_", "-") for m in _third_party_imports()} - set(OPTIONAL_IMPORTS)
    # torch.utils.tensorboard needs the tensorboard distribution: an extra, imported through torch
    undeclared = sorted(imported - core - extras)
    assert undeclared == [], f"imported but not declared: {undeclared}"
    unused = sorted(core - imported)
    assert unused == [], f"declared but never imported: {unused}"


def test_extras_reference_each_other_instead_of_repeating():
    requires = _requires()
    by_extra: dict[str, list[str]] = {}
    for r in requires:
        if "extra ==" in r:
            extra = r.split("extra ==")[1].strip().strip('"').strip("'")
            by_extra.setdefault(extra, []).append(_requirement_name(r))
    seen: dict[str, str] = {}
    for extra, names in sorted(by_extra.items()):
        for name in names:
            if name == "occsynth":
                continue
            assert name not in seen, f"{name} is listed in both [{seen[name]}] and [{extra}]"
            seen[name] = extra


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    leftovers = [ROOT / "build", ROOT / "occsynth.egg-info"]
    existed = [p.exists() for p in leftovers]
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                str(ROOT),
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(dist),
            ],
            check=True,
            cwd=tmp_path,
        )
    finally:  # setuptools builds in the source tree; leave it as it was
        for path, was_there in zip(leftovers, existed):
            if not was_there:
                shutil.rmtree(path, ignore_errors=True)
    wheel = next(dist.glob("occsynth-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "occsynth/py.typed",
        "occsynth/assets/templates/bank.json",
        "occsynth/assets/mask3d/index.json",
        "occsynth/assets/templates_v1/bank.json",
        "occsynth/assets/mask3d_v1/index.json",
        "occsynth/benchmarks/definitions/lfw-occ.yaml",
        "occsynth_train/py.typed",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert sum(n.startswith("occsynth/assets/templates/") and n.endswith(".png") for n in names) == 120
    # the version-1 banks (builds from before harmonisation): the template bank's changed files only
    assert sum(n.startswith("occsynth/assets/templates_v1/") and n.endswith(".png") for n in names) == 20
    assert sum(n.startswith("occsynth/assets/mask3d_v1/") and n.endswith(".png") for n in names) == 168
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OCCSYNTH_ASSETS")}
    env["OCCSYNTH_CACHE"] = str(tmp_path / "cache")

    def run(*args: str) -> str:
        done = subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = run("-c", "import occsynth, occsynth_train; print(occsynth.__file__); print(occsynth_train.__file__)")
    assert all(str(env_dir) in line and str(ROOT) not in line for line in where.split()), where
    cli = [str(env_dir / "bin" / "occsynth")]

    def occsynth(*args: str) -> str:
        done = subprocess.run([*cli, *args], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "verified" in occsynth("demo", "--out", "demo", "--variants", "2", "--workers", "1", "--quiet")
    occsynth(
        "align", "embedded", "--out", "objects", "--occlude", "sunglasses | scarf | mask3d", "--workers", "1", "--quiet"
    )
    index = [json.loads(line) for line in (work / "objects" / "index.jsonl").read_text().splitlines()]
    assert index and all(m["occluders"] and m["occlusion_ratio"] > 0 for m in index)
    # a small named build, its definition read from the installed package
    faces = work / "faces"

    for item in open_source("embedded").items():
        (faces / item.identity).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.member, faces / item.identity / Path(item.member).name)
    occsynth("build", "occ-train", "--src", str(faces), "--out", "train", "--workers", "1", "--quiet")
    manifest = json.loads((work / "train" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] >= 3 and (work / "train" / "card.md").exists()
    assert "OK" in occsynth("verify", "train")
