"""How fast fit_area could be: its render with the size known, against the object it sizes.

    python benchmarks/fit_area_bounds.py [--samples 400] [--rounds 8] [--out benchmarks/results/fit_area_bounds-<host>.json]

Issue 16 asks fit_area(object, harmonize=false) for >= 5,000 images/s/core. This measures, on
one core and in alternation (the median of per-round rates: this machine's speed drifts), four
ways of producing the same occlusions of LFW faces:
  * `object`: object(harmonize=false) itself at its default size (what the issue compared with);
  * `fit_area_known_size`: fit_area with its search replaced by the size it finds (recorded in a
    first pass): the attempt's generators, the pose, one place and the render. No search can be
    cheaper than this; it is the ceiling of any sizing method that keeps this render;
  * `fit_area_known_size_plus_estimate`: the same plus the alpha estimate's work (the two places
    that find the map's pivot, the template's points through the map, the solve), without the
    exact counts that check it;
  * `fit_area`: as it runs.
The outputs of the second are checked equal to fit_area's (image, mask, records), so it is the
same render. The JSON gives each rate, its ratio to `object`, and the time per sample left for a
search if fit_area were to run at 5,000/s on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import write_result  # noqa: E402
from occluders import CPU_TARGET, load_faces  # noqa: E402

from occsynth.faces.templates import get_template  # noqa: E402
from occsynth.occluders import Composer  # noqa: E402
from occsynth.occluders.families import fitting  # noqa: E402
from occsynth.seeding import make_rng  # noqa: E402

INNER = {"name": "object", "params": {"harmonize": False}}
SPEC = {"name": "fit_area", "params": {"occluder": INNER}}


def known_size_search(found: dict, estimate: bool):
    """A FitArea._bisect that returns the size the real search found for this attempt's seed,
    with the render the real one finishes with (`estimate`: after the alpha estimate's work)."""

    def search(self, image, mask, landmarks, name, base_params, param, target, seed, render=True):
        points = np.asarray(landmarks, dtype=np.float64)
        proto = self._template_proto(name, image, points, base_params)
        inner_seed, inner = fitting.inner_generator(seed)
        sizes = proto.sized(image, points, inner)

        def place(factor):
            return sizes.place(fitting._scaled(base_params[param], factor))

        if estimate:
            self._alpha_factor(image, place, target)
        factor, area = found[seed]
        finish = self._finisher(image, mask, landmarks, name, param, factor, place, inner, inner_seed)
        return None, None, {"fit_factor": factor, "area": area}, finish

    return search


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=400, help="samples per round and case")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.samples < 1 or args.rounds < 1:
        print("Error: --samples and --rounds must be at least 1", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    faces, face_source = load_faces()
    landmarks = get_template("arcface-112x112").points.copy()
    n = args.samples
    real_search = fitting.FitArea._bisect
    found: dict[int, tuple[float, float]] = {}

    def recording(self, *args):
        result = real_search(self, *args)
        found[args[7]] = (result[2]["fit_factor"], result[2]["area"])
        return result

    fit = Composer(SPEC)
    fitting.FitArea._bisect = recording
    try:
        reference = [fit(faces[i % len(faces)], landmarks, make_rng(i)) for i in range(n)]
    finally:
        fitting.FitArea._bisect = real_search
    searches = {
        "object": None,
        "fit_area_known_size": known_size_search(found, estimate=False),
        "fit_area_known_size_plus_estimate": known_size_search(found, estimate=True),
        "fit_area": real_search,
    }
    composers = {"object": Composer(INNER)}
    for name in searches:
        composers.setdefault(name, fit)
    # the known-size renders are fit_area's own
    for name in ("fit_area_known_size", "fit_area_known_size_plus_estimate"):
        fitting.FitArea._bisect = searches[name]
        try:
            for i, ref in enumerate(reference):
                got = fit(faces[i % len(faces)], landmarks, make_rng(i))
                same = np.array_equal(got.image, ref.image) and np.array_equal(got.mask, ref.mask)
                if not (same and got.records == ref.records):
                    print(f"Error: {name} gave another occlusion than fit_area for sample {i}", file=sys.stderr)
                    return 1
        finally:
            fitting.FitArea._bisect = real_search

    rates: dict[str, list[float]] = {name: [] for name in searches}
    try:
        for _ in range(args.rounds):
            for name, search in searches.items():
                if search is not None:
                    fitting.FitArea._bisect = search
                composer = composers[name]
                start = time.perf_counter()
                for i in range(n):
                    composer(faces[i % len(faces)], landmarks, make_rng(i))
                rates[name].append(n / (time.perf_counter() - start))
    finally:
        fitting.FitArea._bisect = real_search
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    ceiling = medians["fit_area_known_size"]
    report = {
        "faces": face_source,
        "spec": SPEC,
        "samples_per_round": n,
        "rounds": args.rounds,
        "rates": {
            name: {
                "median": round(value, 1),
                "unit": "images/s/core",
                "over_object": round(value / medians["object"], 3),
                "rounds": [round(r, 1) for r in rates[name]],
            }
            for name, value in medians.items()
        },
        "target": {"value": CPU_TARGET, "unit": "images/s/core"},
        # what a search may cost per sample for fit_area to reach the target on this machine:
        # 1 / target - 1 / (the known-size rate); negative when even no search misses it
        "search_budget_at_target_us": round((1 / CPU_TARGET - 1 / ceiling) * 1e6, 1),
        "search_cost_now_us": round((1 / medians["fit_area"] - 1 / ceiling) * 1e6, 1),
        "estimate_cost_us": round((1 / medians["fit_area_known_size_plus_estimate"] - 1 / ceiling) * 1e6, 1),
    }
    for name, value in medians.items():
        print(f"{name:36s} {value:8.0f} images/s/core  over object {value / medians['object']:.3f}")
    print(
        f"search now {report['search_cost_now_us']} us a sample (the estimate's part "
        f"{report['estimate_cost_us']} us); at {CPU_TARGET:.0f}/s a search could take "
        f"{report['search_budget_at_target_us']} us"
    )
    print(f"wrote {write_result('fit_area_bounds', report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
