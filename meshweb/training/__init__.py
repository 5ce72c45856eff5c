"""Training jobs: validated specs, a status state machine, placements and events."""
