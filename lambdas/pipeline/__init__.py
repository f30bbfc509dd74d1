"""Pipeline Lambda: the plan, gate and unpack steps of the retrain-and-reindex state machine."""
