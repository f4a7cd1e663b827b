"""Files the package ships and reads at run time: the object template bank (`templates/`) and
the 3D face-mask pose bank (`mask3d/`), both made by this project (`occsynth make-templates`,
`occsynth render-masks`), plus what those banks hold (catalog.py).

`asset_dir(name)` finds them inside the installed package (importlib.resources), so a wheel
works without the source tree; `$OCCSYNTH_ASSETS/<name>` overrides when it exists.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ENV_VAR = "OCCSYNTH_ASSETS"


def asset_dir(name: str) -> Path:
    """The folder of asset set `name`: $OCCSYNTH_ASSETS/<name> when that exists, else the
    package's own (where `make-templates` / `render-masks` write by default)."""
    override = os.environ.get(ENV_VAR)
    if override and (Path(override) / name).is_dir():
        return Path(override) / name
    # a regular (unzipped) install: the traversable is a real path
    return Path(str(resources.files(__name__).joinpath(name)))
