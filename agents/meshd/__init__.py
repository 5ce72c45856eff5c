"""meshd, the node agent: config, gRPC server, pluggable components, metrics and health endpoints."""
