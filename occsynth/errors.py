"""The kinds of expected errors, as the command lines report them (leaf module).

Every expected error is one readable line. The CLIs tell two kinds apart by exit code:

* `UsageError` (exit 2): a value, name or path the user gave is not allowed: an option out of
  its range, an occluder parameter of the wrong type, a source path that does not exist, an
  output folder that holds another build. Raised before any work starts.
* everything else expected (exit 1): the work was tried and failed: a corrupt archive, a
  dataset that does not verify, a build that wrote no sample, a folder locked by another build.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A value, name or path given by the user is not allowed (bad usage: the CLIs exit 2)."""
