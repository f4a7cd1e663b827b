"""Where occsynth keeps derived files that can always be rebuilt (decompressed archives, indexes).

Order: an explicit argument, then ``$OCCSYNTH_CACHE``, then ``$XDG_CACHE_HOME/occsynth``, then
``~/.cache/occsynth``. Deleting the folder is always safe.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "OCCSYNTH_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder (absolute, not created here: writers create it when they need it)."""
    if override is not None:
        return Path(override).expanduser().absolute()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return (Path(xdg).expanduser() / "occsynth").absolute()
    return (Path.home() / ".cache" / "occsynth").absolute()
