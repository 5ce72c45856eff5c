"""The portal's link to the node agents: the versioned outbox, the agents' WebSocket, node credentials and the
telemetry agents report."""
