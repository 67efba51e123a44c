"""Test-wide settings: one intra-op thread per test process.

The suite runs as two pytest-xdist workers on two cores; letting each worker also spawn two OpenMP threads
oversubscribes the cores and makes the tiny models used here many times slower, never faster.
"""
import torch

torch.set_num_threads(1)
