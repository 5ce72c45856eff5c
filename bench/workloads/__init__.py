"""Workloads for the routing benchmarks and the demo: shared-prefix, multi-turn conversations, the Azure trace."""
