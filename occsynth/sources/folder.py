"""Identity folders on disk: ``<root>/<identity>/<image>``, symbolic links followed."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from occsynth.io.images import ImageLoadError
from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceError, SourceItem, _make_items, _summary


@SOURCES.register("folder")
class FolderSource(Source):
    kind = "folder"
    priority = 20

    @classmethod
    def claims(cls, spec, path, st) -> bool:
        return st is not None and stat.S_ISDIR(st.st_mode)

    def __init__(self, root: str | os.PathLike):
        self._root = Path(root).expanduser().absolute()
        items, wrapper, ignored = _make_items(_walk(self._root))
        super().__init__(str(self._root), f"folder {self._root} ({_summary(items, wrapper, ignored)})", items, ignored)

    def _read(self, item: SourceItem) -> bytes:
        try:
            return (self._root / item.member).read_bytes()
        except OSError as exc:
            raise ImageLoadError("read", f"cannot read {item.member}: {exc.strerror or exc}") from exc


def _walk(root: Path) -> list[tuple[str, int, int, str]]:
    """All non-folder entries below root as (relative posix path, size, -1, problem), following
    symbolic links; a link back to an enclosing folder is a loop and an error."""
    found: list[tuple[str, int, int, str]] = []

    def visit(folder: str, rel: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            # Skipping an unreadable folder would silently lose its images.
            raise SourceError(f"cannot list {folder}: {exc.strerror or exc}") from exc
        for entry in entries:
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise SourceError(f"symbolic link loop at {entry.path}") from exc
                if entry.is_symlink():
                    found.append((relpath, -1, -1, f"broken symbolic link -> {os.readlink(entry.path)}"))
                    continue
                raise SourceError(f"cannot stat {entry.path}: {exc.strerror or exc}") from exc
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise SourceError(
                        f"symbolic link loop: {entry.path} -> {os.path.realpath(entry.path)}, which encloses it"
                    )
                visit(entry.path, relpath, ancestors | {key})
            elif stat.S_ISREG(st.st_mode):
                found.append((relpath, st.st_size, -1, ""))
            else:
                found.append((relpath, -1, -1, f"not a regular file ({_file_kind(st.st_mode)})"))

    try:
        top = root.stat()
    except OSError as exc:
        raise SourceError(f"{root}: {exc.strerror or exc}") from exc
    visit(str(root), "", frozenset({(top.st_dev, top.st_ino)}))
    return found


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"
