"""occsynth: occluded-face data synthesis.

sources -> align -> occlude -> write shards; see README.md for the data contract.
"""

__version__ = "0.1.0"

from occsynth.occluders import create_occluder, list_occluders, occlude  # noqa: E402

__all__ = ["__version__", "create_occluder", "list_occluders", "occlude"]
