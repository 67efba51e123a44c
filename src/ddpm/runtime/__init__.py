"""Where and how code runs: devices, precision, torchrun/DDP, atomic files."""
