"""The training run: the stage loop, checkpoints and resume, the metrics log, the final export."""
