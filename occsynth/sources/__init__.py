"""Where input images come from: a folder, a tar archive (plain or compressed) or the embedded
demo images.

Layout is ``<identity>/<image>`` below the source root:

* ``sample_id`` is the file's posix path relative to the root ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
  and ``identity`` its first component.
* Files directly at the root BESIDE identity folders are not images of anyone (MFR2 ships
  ``pairs.txt`` and a labels file there): they are ignored, listed in ``Source.ignored`` and in
  the dataset manifest's ``source.ignored``, never items.
* A single wrapper folder holding the identity folders is stripped (LFW's archive is
  ``lfw-deepfunneled/<Name>/<Name>_0001.jpg``). Exactly one level is stripped, and only when the
  root holds nothing but that folder (and ignored files) and the folder holds at least one
  sub-folder, so a source with a single identity folder keeps it. Files beside the identity
  folders inside the wrapper are ignored as above.
* A flat folder (files only, no identity folders) makes each file its own identity named after
  the file stem ("photo.jpg" -> "photo").
* Deeper files (``<identity>/<sub>/<image>``) belong to the first component.
* Names that are not valid UTF-8 (a latin-1 "caf\\xe9.jpg" from an old archive) become items
  whose sample ids and identities write those bytes as ``\\xNN`` (``sources.base.printable_name``;
  unique, with a ``~N`` suffix should that collide with a real name); they are read by their
  real name.

Every other entry that is not a folder becomes an item, whatever its name: a ``notes.txt`` or
``.DS_Store`` inside an identity folder is an item that fails to decode and gets a failure record;
a broken symbolic link or a FIFO is an item whose read fails with that reason. Nothing is
skipped silently.

Items are sorted by ``sample_id`` (never file-system order). Items and sources are plain
picklable objects: worker processes receive them and read by themselves.

Archives are never extracted. A plain tar is indexed (member -> data offset, size) and read by
seek. A compressed tar (gzip/bzip2/xz, recognised by content, not by name) is decompressed once
into the cache as a plain tar, keyed by the archive's (absolute path, size, mtime_ns), written to
a temporary file and moved into place with ``os.replace`` so an interrupted run never leaves a
partial cache. Indexes are cached beside it as JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

from occsynth.sources._registry import SOURCES
from occsynth.sources.base import Source, SourceError, SourceItem, SourceNotFoundError

__all__ = ["SOURCES", "Source", "SourceError", "SourceItem", "SourceNotFoundError", "open_source"]


def open_source(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Source:
    """Open a folder, a tar archive (plain, .tgz/.tar.gz, .tar.bz2, .tar.xz), an insightface
    `.rec` or, for the exact string "embedded", the embedded demo images (a folder named so is
    reached as "./embedded"). Each registered source kind says whether it claims `spec`; the
    first by `priority` opens it.

    ``cache_dir`` is where compressed archives are decompressed and indexes are kept (default:
    see :func:`occsynth.io.cache.cache_dir`).
    """
    path = Path(spec).expanduser()
    try:
        st: os.stat_result | None = path.stat()
        problem = ""
    except OSError as exc:
        st, problem = None, exc.strerror or str(exc)
    for _, kind in sorted(SOURCES.items(), key=lambda entry: entry[1].priority):
        if kind.claims(spec, path, st):
            return kind.open(spec, path, cache_dir)
    if st is None:
        raise SourceNotFoundError(f"{spec}: {problem}")
    raise SourceError(f"{spec}: neither a folder nor a regular file")
