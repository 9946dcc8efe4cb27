"""Click evaluation: the simulated annotator, metrics, the click loop, reports and the comparison rows.

  clicks.py     the annotator's click rule (first click at the target's centre, next at the centre of
                the largest error region); also used by the trainer's validation and the AL simulation
  cases.py      image/label pairs, label volumes, targets, structure names
  metrics.py    Dice, NSD (surface Dice at a tolerance in mm)
  loop.py       the click loop against any segmenter; model and classical rows
  classical.py  the classical comparison methods (random walker, geodesic region)
  tune.py       python -m lib.evaluation.tune: their parameters, tuned on development cases
  medsam.py     the MedSAM box row (a box counts as two clicks)
  report.py     summary, per-structure tables, CSV files, markdown
  plots.py      dice_vs_clicks.png
  command.py    python -m lib.evaluation --model sammed3d|medsam|random_walker|geodesic ...

Imports nothing here: lib.training and lib.activelearning import lib.evaluation.clicks on machines
without monai or SimpleITK. Layer: above lib/session and lib/medsam, below lib/training.
"""
