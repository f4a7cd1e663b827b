"""PDSN's grid occlusions: the aligned face cut into a K x K grid (5 x 5 in the paper); one
cell (optionally with its 4-neighbours) is occluded, and the cell index is the label the
mask generators are trained on."""

from __future__ import annotations

import numpy as np

from occsynth.occluders.base import Occluder, register_occluder, sample_value
from occsynth.occluders.families.geometric import FILL, fill_pixels
from occsynth.occluders.params import SpecError, anything, flag, integer

CENTRAL_CELLS_5x5 = (6, 7, 8, 11, 12, 13, 16, 17, 18)


def cell_bounds(cell: int, grid: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a cell, row-major; edges rounded so the cells tile the image."""
    row, col = divmod(cell, grid)
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    return int(xs[col]), int(ys[row]), int(xs[col + 1]), int(ys[row + 1])


def neighbours(cell: int, grid: int) -> list[int]:
    row, col = divmod(cell, grid)
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = row + dr, col + dc
        if 0 <= r < grid and 0 <= c < grid:
            out.append(r * grid + c)
    return out


@register_occluder
class GridCell(Occluder):
    """Params: cell (index, or a list / "all" / "central" to draw one), grid (cells per side),
    with_neighbours (also occlude the 4-neighbours), fill (black/white/noise/mean)."""

    family = "geometric"
    name = "grid_cell"
    defaults = {"cell": "all", "grid": 5, "with_neighbours": False, "fill": "black"}
    schema = {
        "cell": anything("a cell index, a list of them, 'all' or 'central'", nullable=False),
        "grid": integer(1, scalar=True),
        "with_neighbours": flag(),
        "fill": FILL,
    }

    def __init__(self, **params):
        super().__init__(**params)
        cell, grid = self.params["cell"], self.params["grid"]
        cells = cell if isinstance(cell, (list, tuple)) else [cell]
        if cell == "central" and grid != 5:
            raise SpecError("occluder 'grid_cell' parameter 'cell': 'central' is defined for the 5x5 grid (grid=5)")
        if cell not in ("all", "central") and not (
            cells and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < grid * grid for c in cells)
        ):
            raise SpecError(
                f"occluder 'grid_cell' parameter 'cell': got {cell!r}; expected 'all', 'central', "
                f"or a cell index (or list of them) in [0, {grid * grid - 1}]"
            )

    def apply(self, image, landmarks, rng):
        h, w = image.shape[:2]
        grid = int(self.params["grid"])
        choice = self.params["cell"]
        if choice == "all":
            choice = list(range(grid * grid))
        elif choice == "central":
            if grid != 5:
                raise ValueError("cell='central' is defined for the 5x5 grid")
            choice = list(CENTRAL_CELLS_5x5)
        cell = int(choice[int(rng.integers(len(choice)))]) if isinstance(choice, (list, tuple)) else int(choice)
        if not 0 <= cell < grid * grid:
            raise ValueError(f"cell {cell} outside a {grid}x{grid} grid")
        cells = [cell] + (neighbours(cell, grid) if sample_value(self.params["with_neighbours"], rng) else [])
        mask = np.zeros((h, w), dtype=bool)
        for c in cells:
            x0, y0, x1, y1 = cell_bounds(c, grid, w, h)
            mask[y0:y1, x0:x1] = True
        fill = sample_value(self.params["fill"], rng)
        return (
            fill_pixels(image, mask, fill, rng),
            mask,
            {"cell": cell, "cells": sorted(cells), "grid": grid, "fill": fill},
        )
