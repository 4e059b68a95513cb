"""What every task's training shares: the learning-rate schedule, the Keras batch feeder base, one
compiled inference call, the shared data folder, and small helpers for run records.

Registry entries and model cards are written by `training.export`; import manifests are read by
`training.manifest`.
"""
