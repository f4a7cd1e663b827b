"""occsynth's occluders inside other libraries' pipelines, for online augmentation.

Each adapter is its own module and imports its library only when imported itself (a missing
library is one ImportError line naming the extra to install):

  albumentations.py  `Occlude(spec, p=...)`: an albumentations DualTransform (image, mask and
                     keypoints targets; the 5 landmarks come in as keypoints); its params replay
                     through ReplayCompose. Also importable as `occsynth.albumentations`.
  torchvision.py     `OccludeBatch(spec, ...)`: a torchvision.transforms.v2-style nn.Module over
                     a batch (TorchOccluder), plain tensors or tv_tensors; needs no torchvision.
  webdataset.py      `OccludeSample(spec, seed=...)`: a webdataset `.map(...)` stage occluding
                     decoded aligned samples, the seed derived from the sample key.

Landmarks (landmarks.py) are the contract's 5 points (left eye, right eye, nose, left and right
mouth corners) in image pixels, rounded to 1/1000 px as everywhere in occsynth; aligned crops
without landmarks name their alignment template instead (`template="arcface-112x112"`).
"""
