"""Training of SAM-Med3D: synthetic phantoms, crops, click-simulation loop, checkpoints (pure torch/numpy/scipy)."""
