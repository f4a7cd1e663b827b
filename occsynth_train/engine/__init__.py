"""The training engine: the loop (trainer.py), checkpoints (checkpoint.py), optimisers and the LR
schedule (optim.py), single-process / torchrun DDP (distributed.py) and the run log (runlog.py)."""
