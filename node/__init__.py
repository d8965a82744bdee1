"""Node agents: one per GPU (or per GPU-less host) that keep runner instances warm and run predictions."""
