"""occsynth_train: train and evaluate occluded-face recognition methods on occsynth shards.

    data.py        ShardStream (training stream, rank/worker split, resume), KeyedDataset (eval),
                   LabelMap (labels.json), prepare_batch (device, online occlusion, resize)
    backbones/     create_backbone(name): iresnet18/34/50/100, lightcnn9/29, vgg16, resnet18_unet
    heads.py       create_head(name): arcface, cosface, combined, softmax
    losses.py      pixel_cross_entropy, region_consistency (segmentation branches)
    methods/       Method interface + METHODS registry (baseline; others plug in by file)
    trainer.py     train(cfg): DDP, precision, schedule, checkpoints/resume, NaN guard, logs
    evaluate.py    evaluate_run(run, benchmarks): verification, identification, mask IoU, ROC
    metrics.py     the metrics, on numpy arrays
    cli.py         `occsynth-train <method> --config cfg.yaml`, `occsynth-train eval ...`
"""
__version__ = "0.1.0"
