"""The registry of source kinds (leaf module: imports none of them)."""

from occsynth.registry import Registry

SOURCES = Registry(
    "source",
    modules=(
        "occsynth.sources.folder",
        "occsynth.sources.tar",
        "occsynth.sources.embedded",
        "occsynth.sources.recordio",
        "occsynth.sources.combined",
    ),
)
