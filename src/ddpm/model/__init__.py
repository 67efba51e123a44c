"""The noise predictor eps_theta(x_t, t): the U-Net and its CUDA-graph wrapper.  Knows nothing of the schedule."""
