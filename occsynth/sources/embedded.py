"""The embedded demo source: real photographs that ship inside occsynth's own dependencies, so
``occsynth demo`` runs offline with no dataset.

Each image is read from its package's installed files (their real bytes, not a re-encoding)
and laid out as ``<identity>/<file>`` like any identity-folder dataset:

* ``Eileen_Collins/astronaut.png``  scikit-image, RGB portrait (NASA photo, public domain)
* ``Grace_Hopper/grace_hopper.jpg`` matplotlib, JPEG portrait (public domain)
* ``cameraman/camera.png``         scikit-image, 8-bit greyscale: exercises the grey path
* ``no_face_cat/chelsea.png``      scikit-image, a cat: exercises the no-face policy
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from occsynth.io.images import ImageLoadError
from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceError, SourceItem

__all__ = ["EMBEDDED_IMAGES", "EmbeddedImage", "EmbeddedSource"]


@dataclass(frozen=True)
class EmbeddedImage:
    identity: str
    filename: str
    package: str  # the pip distribution that ships the file
    has_face: bool  # whether the photo shows a human face (not a detector result)
    note: str


EMBEDDED_IMAGES = (
    EmbeddedImage("Eileen_Collins", "astronaut.png", "scikit-image", True, "RGB portrait"),
    EmbeddedImage("Grace_Hopper", "grace_hopper.jpg", "matplotlib", True, "JPEG portrait"),
    EmbeddedImage("cameraman", "camera.png", "scikit-image", True, "greyscale"),
    EmbeddedImage("no_face_cat", "chelsea.png", "scikit-image", False, "no human face"),
)


def _package_dir(package: str) -> Path:
    try:
        if package == "scikit-image":
            # The package folder, not skimage.data.data_dir: that one is pooch's download cache,
            # while these classic images are installed with the wheel next to the module.
            import skimage.data

            return Path(skimage.data.__file__).parent
        if package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError as exc:
        raise SourceError(
            f"the embedded demo images need {package}, which cannot be imported ({exc}); "
            f"install it with `pip install {package}`"
        ) from exc
    raise ValueError(f"no embedded images come from {package!r}")


def _locate(image: EmbeddedImage) -> Path:
    path = _package_dir(image.package) / image.filename
    if not path.is_file():
        raise SourceError(
            f"embedded demo image {image.filename} not found at {path}: it ships with "
            f"{image.package}; reinstall it with `pip install --force-reinstall {image.package}`"
        )
    return path


@SOURCES.register("embedded")
class EmbeddedSource(Source):
    """Same API as every Source; ``member`` is the absolute path of the installed file."""

    kind = "embedded"
    priority = 0

    @classmethod
    def claims(cls, spec, path, st) -> bool:
        return isinstance(spec, str) and spec == "embedded"

    @classmethod
    def open(cls, spec, path, cache_dir) -> EmbeddedSource:
        return cls()

    def __init__(self) -> None:
        items = []
        for image in EMBEDDED_IMAGES:
            path = _locate(image)
            items.append(
                SourceItem(
                    sample_id=f"{image.identity}/{image.filename}",
                    identity=image.identity,
                    member=str(path),
                    size=path.stat().st_size,
                )
            )
        listing = ", ".join(f"{i.filename} ({i.package})" for i in EMBEDDED_IMAGES)
        super().__init__("embedded", f"embedded demo images: {listing}", items)

    def _read(self, item: SourceItem) -> bytes:
        try:
            return Path(item.member).read_bytes()
        except OSError as exc:
            raise ImageLoadError("read", f"cannot read {item.member}: {exc.strerror or exc}") from exc
