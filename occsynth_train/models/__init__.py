"""The networks: face backbones (backbones/), classification heads (heads.py), the mask losses
of segmentation branches (losses.py) and mixed-precision helpers (amp.py)."""
