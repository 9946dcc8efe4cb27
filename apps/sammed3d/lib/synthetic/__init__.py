"""Synthetic volumes with perfect labels; pure torch/numpy (SimpleITK only to write files), no other
lib package imported, so training, active learning, scripts and tests can all use it.

  shapes.py    random 3D shapes as signed distance functions, smooth random fields
  phantoms.py  multi-structure CT/MR body phantoms (the default model's training data)
  kinds.py     the active-learning simulation's four kinds of volume (scanner x contrast x shape)
  cases.py     small labelled cases written as NIfTI (trainer tests, fine-tuning demo, benchmarks)
"""
