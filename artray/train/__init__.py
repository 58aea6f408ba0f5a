"""Distributed fine-tuning on Ray Train with DeepSpeed (`artray train`).

- ``config``    TrainConfig and the published recipes as presets
- ``data``      train/val examples, caption-source and variant (alpha) mixing, leakage guard
- ``engine``    DeepSpeed config, optimizer, schedule, 0-dim parameter fix
- ``loop``      the per-worker Ray Train loop
- ``validate``  retrieval recall / val loss inside the loop
- ``export``    DeepSpeed checkpoint → consolidated fp32 weights in the family's published layout
- ``run``       ``run_train(cfg)``: datasets, TorchTrainer, export
- one module per family: ``longclip`` …
"""
