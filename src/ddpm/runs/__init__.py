"""The run folder: its config, checkpoints, metrics log and lock, and the pictures written into it."""
