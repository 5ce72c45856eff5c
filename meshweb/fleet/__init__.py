"""Regions, zones and cells; nodes with their status lifecycle; GPUs and MIG slices."""
