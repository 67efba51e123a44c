"""Algorithm 1: the Trainer, its learning-rate and EMA schedules, previews."""
