"""Signal plane: adapters that read runtimes, GPUs and collectives, the fusion of their deltas, and scoring."""
