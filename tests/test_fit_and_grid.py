import numpy as np
import pytest

from occsynth.occluders import create_occluder, occlude
from occsynth.occluders.families.grid import CENTRAL_CELLS_5x5, cell_bounds, neighbours
from occsynth.seeding import make_rng

LANDMARKS = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])


@pytest.fixture(scope="module")
def face():
    import cv2
    from skimage.data import astronaut

    return cv2.resize(astronaut()[30:250, 150:330], (112, 112), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize(
    "inner", [{"name": "object", "params": {"split": "eval"}}, {"name": "ellipse", "params": {"ratio": 0.1}}]
)
def test_fit_area_reaches_each_target(face, inner):
    param = "scale" if inner["name"] == "object" else "ratio"
    errors = []
    for seed in range(40):
        target = 0.2 + 0.01 * seed  # 0.20 .. 0.59
        spec = {"name": "fit_area", "params": {"ratio": target, "occluder": inner, "param": param}}
        result = occlude(face, LANDMARKS, spec, seed)
        record = result.records[0]
        assert record["name"] == inner["name"] and record["fit"]["target"] == target
        assert record["area"] == pytest.approx(result.ratio)  # the only occluder: its area is the ratio
        errors.append(abs(result.ratio - target))
    assert np.median(errors) <= 0.002 and max(errors) <= 0.02


def test_fit_area_is_deterministic(face):
    spec = {"name": "fit_area", "params": {"ratio": [0.3, 0.5], "occluder": {"name": "object", "params": {}}}}
    a, b = occlude(face, LANDMARKS, spec, 3), occlude(face, LANDMARKS, spec, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.records == b.records


def test_grid_cells_tile_the_image_and_know_their_neighbours():
    covered = np.zeros((112, 96), int)
    for cell in range(25):
        x0, y0, x1, y1 = cell_bounds(cell, 5, 96, 112)
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()
    assert sorted(neighbours(0, 5)) == [1, 5] and sorted(neighbours(12, 5)) == [7, 11, 13, 17]


def test_grid_cell_occludes_exactly_its_cells(face):
    occluder = create_occluder("grid_cell", cell="central", with_neighbours=True)
    for seed in range(20):
        image, mask, record = occluder(face, np.zeros(face.shape[:2], np.uint8), LANDMARKS, make_rng(seed))
        params = record["params"]
        assert params["cell"] in CENTRAL_CELLS_5x5 and len(params["cells"]) == 5
        expected = np.zeros(face.shape[:2], bool)
        for cell in params["cells"]:
            x0, y0, x1, y1 = cell_bounds(cell, 5, 112, 112)
            expected[y0:y1, x0:x1] = True
        assert np.array_equal(mask == 255, expected)
        assert (image[expected] == 0).all() and np.array_equal(image[~expected], face[~expected])
