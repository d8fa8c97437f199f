"""Training: the loop, schedules and checkpoints."""
