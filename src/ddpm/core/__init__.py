"""The paper's maths as pure tensor functions: the noise schedule, the forward process and posterior, respacing,
the samplers and the variational bound.  Imports nothing else of ddpm."""
