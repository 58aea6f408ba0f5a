"""What a training checkpoint folder holds: DeepSpeed's files under ``CKPT_TAG`` and rank 0's loop state
(``STATE_FILE``: epoch, step, history, reshaped 0-dim parameters). The loop writes it; export reads it."""

CKPT_TAG = "ds"
STATE_FILE = "train_state.json"
