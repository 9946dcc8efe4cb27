"""Training of SAM-Med3D: the shared recipe (optimiser and step), losses, training crops, the
device-resident volume pool, and from-scratch training of the default model (pure torch/numpy).
Synthetic training data comes from lib.synthetic."""
