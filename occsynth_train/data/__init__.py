"""Data over occsynth datasets (see occsynth/contract.py).

shards.py        a dataset directory: manifest, shard list, index, raw tar samples, decoding
labels.py        LabelMap: identity <-> class id, the run's labels.json
stream.py        ShardStream: the endless training stream (rank/worker split, pairing, resume,
                 corrupt samples skipped and counted by BadSamples)
loaders.py       make_train_loader: the DataLoader over a ShardStream
batch.py         collate (uint8 tensors), Batch, prepare_batch (device, online occlusion,
                 resize, normalise to [-1, 1])
keyed.py         KeyedDataset: every sample of a directory by index or key (evaluation)
lfw_protocol.py  the LFW mini-protocol split (PROTOCOL.md)
"""
