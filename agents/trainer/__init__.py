"""Trainer agents: launch the workers of placed training jobs with torchrun and report their telemetry."""
