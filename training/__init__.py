"""Students, losses, the Ray Train + DeepSpeed loop, evaluation and Tune."""
