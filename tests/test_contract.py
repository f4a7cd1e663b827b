import numpy as np
import pytest

from occsynth import contract
from occsynth.build.executor import ProcessExecutor, SerialExecutor, create_executor
from occsynth.seeding import derive_seed, make_rng


def test_dumps_is_canonical_and_numpy_aware():
    a = contract.dumps({"b": np.float32(0.5), "a": np.arange(3), "c": (np.int64(2), True)})
    assert a == '{"a":[0,1,2],"b":0.5,"c":[2,true]}'
    with pytest.raises(ValueError, match="non-finite"):
        contract.dumps({"x": float("nan")})


def test_occlusion_ratio_counts_occluded_pixels():
    mask = np.zeros((10, 20), np.uint8)
    mask[:5, :4] = 255
    assert contract.occlusion_ratio(mask) == 20 / 200


def test_validate_sample_meta_names_each_problem():
    good = {
        "key": "0",
        "sample_id": "a/b.jpg",
        "identity": "a",
        "source": "a/b.jpg",
        "template": "arcface-112x112",
        "image_size": [112, 112],
        "landmarks": [[0, 0]] * 5,
        "seed": 1,
        "occluders": [{"family": "geometric", "name": "block", "params": {}}],
        "occlusion_ratio": 0.2,
    }
    assert contract.validate_sample_meta(good) == []
    bad = dict(good, image_size=[112], occlusion_ratio=1.5, landmarks=[[0, 0]] * 4, occluders=[{"name": "x"}])
    problems = " | ".join(contract.validate_sample_meta(bad))
    for word in ("image_size", "occlusion_ratio", "landmarks", "family"):
        assert word in problems
    assert contract.validate_sample_meta({}) and "missing field" in contract.validate_sample_meta({})[0]


def test_seeds_depend_on_names_only():
    assert derive_seed(0, "a/b.jpg") == derive_seed(0, "a/b.jpg")
    assert derive_seed(0, "a/b.jpg") != derive_seed(1, "a/b.jpg")
    assert derive_seed(0, "a/b.jpg") != derive_seed(0, "a/c.jpg")
    assert 0 <= derive_seed(123, "x") < 2**63
    assert make_rng(5).integers(0, 1 << 30, 4).tolist() == make_rng(5).integers(0, 1 << 30, 4).tolist()


def _square(x):
    return x * x


def test_executors_give_the_same_results():
    tasks = list(range(7))
    serial = sorted(SerialExecutor().map_unordered(_square, tasks))
    pooled = sorted(ProcessExecutor(2).map_unordered(_square, tasks))
    assert serial == pooled == [t * t for t in tasks]
    assert isinstance(create_executor("process", 1), SerialExecutor)
    with pytest.raises(KeyError):
        create_executor("dask", 2)


def test_ray_executor_matches_serial_on_a_local_instance():
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra occsynth[ray])")
    from occsynth.build.executor import RayExecutor

    try:
        executor = RayExecutor(workers=2)
        # a builtin: Ray workers cannot import functions defined in test modules
        assert sorted(executor.map_unordered(abs, [-3, 1, -2, 0])) == [0, 1, 2, 3]
    finally:
        ray.shutdown()
