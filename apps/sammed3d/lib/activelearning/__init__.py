"""Active learning for SAM-Med3D: which unlabeled volume should be annotated next.

Pure parts (no MONAI Label imports; used by the server tasks and the offline simulation):
  prompts.py      where an unlabeled volume's prompts come from (clicks, original labels, location prior)
  uncertainty.py  disagreement of the model with itself under perturbed prompts / flips
  diversity.py    pooled encoder features, k-center (core-set) distances
  select.py       rank-normalised mixing and greedy batch selection shared by strategies and simulation
MONAI Label glue:
  store.py        scores in the datastore (with the model version), datastore reload, hand-out tracking
  scoring.py      ScoringMethod subclasses (POST /scoring/<name>)
  strategies.py   Strategy subclasses (POST /activelearning/<name>)
Offline:
  simulate.py     python -m lib.activelearning.simulate (simulated annotator, Dice vs labelled volumes)
  sim_pool.py     the synthetic pool and held-out set (kinds of scanner, contrast and object)
  sim_train.py    fine-tuning the mask decoder on cached embeddings (the trainer's click chain)
  sim_report.py   curves, the target arithmetic, CSV/JSON/PNG outputs

Design: docs/activelearning.md.
"""
