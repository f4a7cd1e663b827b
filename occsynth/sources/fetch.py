"""Downloading public datasets: resumable, checksummed, atomic.

``fetch(url, dest)`` downloads into ``dest.part``; an interrupted download keeps the partial
file and the next call resumes it with an HTTP ``Range`` request (starting over when the
server ignores ranges). The complete file is checked against its sha256 (a mismatch deletes it
and raises) and only then renamed to ``dest``, so ``dest`` existing means a complete, verified
file.

``fetch_dataset(name, to_dir)`` fetches every file of a :data:`KNOWN_DATASETS` entry, trying
each file's mirrors in order; ``base_url`` replaces the mirrors by ``<base_url>/<file name>``
(a local mirror, or the loopback server of the tests).
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from occsynth import __version__
from occsynth.io.tar import sha256_file

__all__ = ["FetchError", "KNOWN_DATASETS", "RemoteFile", "fetch", "fetch_dataset"]


class FetchError(RuntimeError):
    """A download that could not be completed or verified (the message says what to do)."""


class _Interrupted(Exception):
    """The transfer stopped before the end; the .part file is kept for a resume."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the target folder
    urls: tuple[str, ...]  # mirrors, tried in order
    sha256: str


# sha256 values: ../shared/data/README.md, where each was computed from the real files. The
# UMass URLs are the official LFW site; the figshare copies of the pairs files are the mirrors
# scikit-learn uses (sklearn/datasets/_lfw.py lists the same sha256 values). None of these
# URLs was reachable from the development machine (no network): the download logic is tested
# against a loopback server, the checksums against the shared copies of the files.
_LFW = "http://vis-www.cs.umass.edu/lfw"
KNOWN_DATASETS: dict[str, list[RemoteFile]] = {
    "lfw": [
        RemoteFile(
            "lfw-deepfunneled.tgz",
            (f"{_LFW}/lfw-deepfunneled.tgz",),
            "d8b343af6e6ceaf0e002b243f095127f1a5ae1a56860801c77ce6351542a2cd8",
        ),
        RemoteFile(
            "pairs.txt",
            (f"{_LFW}/pairs.txt", "https://ndownloader.figshare.com/files/5976006"),
            "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
        ),
        RemoteFile(
            "pairsDevTrain.txt",
            (f"{_LFW}/pairsDevTrain.txt", "https://ndownloader.figshare.com/files/5976012"),
            "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
        ),
        RemoteFile(
            "pairsDevTest.txt",
            (f"{_LFW}/pairsDevTest.txt", "https://ndownloader.figshare.com/files/5976009"),
            "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
        ),
    ],
}

_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    resume: bool = True,
    chunk: int = 1 << 20,
    progress: bool = True,
    *,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` (a file path, or an existing folder to put the URL's file
    name in) and return the path.

    * ``resume``: continue a ``dest.part`` left by an interrupted call (else start over).
    * ``retries``: how many times a transfer cut midway is resumed within this call.
    * ``sha256``: required digest. A ``dest`` already present with this digest is not
      downloaded again; one with another digest is an error (it is not overwritten).
    """
    dest = Path(dest)
    if dest.is_dir():
        name = Path(urlparse(url).path).name
        if not name:
            raise FetchError(f"{url}: no file name in the URL; give dest as a file path")
        dest = dest / name
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if sha256 is None:
            return dest
        digest = sha256_file(dest)
        if digest == sha256:
            return dest
        raise FetchError(f"{dest} exists with sha256 {digest}, expected {sha256}; delete it to download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not resume:
        part.unlink(missing_ok=True)

    for attempt in range(retries + 1):
        try:
            _transfer(url, part, chunk, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                raise FetchError(
                    f"download of {url} interrupted ({exc}); {have:,} bytes kept in {part}; run again to resume"
                ) from None

    if sha256 is not None:
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise FetchError(
                f"{url}: sha256 of the download is {digest}, expected {sha256}; the file was "
                "deleted (a wrong mirror, a changed file, or corruption in transit)"
            )
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, chunk: int, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"occsynth/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # nothing left after `have`: complete if the server's size is `have`, else start over
            total = _parse_content_range(exc.headers.get("Content-Range", ""))[2]
            if total == have:
                return
            part.unlink()
            return _transfer(url, part, chunk, progress, timeout)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from None

    with response:
        total = None
        if have and response.status == 206:
            start, _, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != have:
                raise FetchError(f"{url}: asked for bytes from {have}, the server sent from {start}")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # no resume possible: the server sent the whole file
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        bar = _progress_bar(part.name[: -len(".part")], total, have, progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = response.read(chunk)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
                    if not block:
                        break
                    f.write(block)
                    have += len(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        finally:
            bar.close()
    if total is not None and have < total:
        raise _Interrupted(f"connection closed after {have:,} of {total:,} bytes")
    if total is not None and have > total:
        part.unlink()
        raise FetchError(f"{url}: received {have:,} bytes, the server announced {total:,}")


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None, None
    start, end, total = m.groups()
    as_int = lambda v: int(v) if v is not None and v != "*" else None  # noqa: E731
    return as_int(start), as_int(end), as_int(total)


def _progress_bar(name: str, total: int | None, initial: int, enabled: bool):
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def fetch_dataset(
    name: str,
    to_dir: str | os.PathLike,
    base_url: str | None = None,
    *,
    progress: bool = True,
    retries: int = 3,
) -> dict[str, Path]:
    """Fetch every file of ``KNOWN_DATASETS[name]`` into ``to_dir``; returns {file name: path}.

    Files already present with the right sha256 are kept. Each file's mirrors are tried in
    order (``base_url`` replaces them by ``<base_url>/<file name>``); when all fail, the error
    lists what each one answered."""
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(KNOWN_DATASETS)}")
    to_dir = Path(to_dir)
    to_dir.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, Path] = {}
    for remote in KNOWN_DATASETS[name]:
        urls = (f"{base_url.rstrip('/')}/{remote.name}",) if base_url else remote.urls
        errors = []
        for url in urls:
            try:
                fetched[remote.name] = fetch(
                    url, to_dir / remote.name, sha256=remote.sha256, progress=progress, retries=retries
                )
                break
            except FetchError as exc:
                errors.append(str(exc))
        else:
            raise FetchError(f"could not fetch {remote.name} of {name}:\n  " + "\n  ".join(errors))
    return fetched
