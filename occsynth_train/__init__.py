"""occsynth_train: train and evaluate occluded-face recognition methods on occsynth shards.

config.py      Config: the YAML training config, checked against typed sections
data/          the training stream (rank/worker split, resume), labels.json, loaders, the
               Batch type and its normalisation, KeyedDataset (evaluation), the LFW
               mini-protocol split
models/        backbones/ (create_backbone: iresnet18/34/50/100, lightcnn9/29, vgg16,
               resnet18_unet), heads.py (create_head: arcface, cosface, combined, softmax),
               losses.py (mask losses of segmentation branches), amp.py
methods/       the Method interface and one file per method (baseline, msml, pdsn, alob,
               soidn, lcd), created by name
engine/        trainer.py (train(cfg): DDP, precision, schedule, resume, NaN guard),
               checkpoint.py, optim.py, distributed.py, runlog.py
eval/          evaluate.py (evaluate_model / evaluate_run: verification, identification, mask
               IoU, ROC), models.py (run, ONNX, TorchScript, factory models), insightface_bin.py,
               suite.py (the occlusion suite), metrics.py (the metrics, on numpy arrays)
cli.py         `occsynth-train <method> --config cfg.yaml`, `occsynth-train eval ...`
"""

__version__ = "0.1.0"
