"""Distributed fine-tuning on Ray Train with plain DDP or DeepSpeed (`artray train`).

- ``config``    TrainConfig (presets come from the model families, :mod:`artray.families`)
- ``data``      train/val examples, caption-source and variant (alpha) mixing, leakage guard
- ``batches``   decoded images and tensors on the worker's device
- ``strategy``  which engine a run trains with (ddp / deepspeed / auto) and building it
- ``ddp``       torch DDP behind DeepSpeed's engine calls; its checkpoint file
- ``engine``    DeepSpeed config, optimizer, schedule, 0-dim parameter fix
- ``loop``      the per-worker Ray Train loop
- ``validate``  retrieval recall (the evaluation's metrics) / val loss inside the loop
- ``checkpoint_layout``  what a checkpoint folder holds (written by the loop, read by export)
- ``export``    DeepSpeed or DDP checkpoint → consolidated fp32 weights in the family's published layout
- ``run``       ``run_train(cfg)``: datasets, TorchTrainer, best checkpoint, export
- one module of training hooks per trainable family (``longclip``, ``cnclip``, ``blip``, ``captioner``),
  named by that family's ``trainer`` reference; the loop and the trainer know no family by name
"""
