"""occsynth_train: train and evaluate occluded-face recognition methods on occsynth shards."""
__version__ = "0.1.0"
