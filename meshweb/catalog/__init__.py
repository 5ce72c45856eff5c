"""Models, their revisions and deployments (pinning a revision to zones, node selectors and GPU types)."""
