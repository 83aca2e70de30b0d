"""The training engine every stage shares: ``Trainer`` (the one loop: precision, accumulation,
clipping, EMA, budgets, non-finite guard, checkpoints, metrics), ``TrainTask`` (what a stage
supplies), checkpoints, optimisers and schedules, and the curves drawn from a run's log."""
