"""The policy store: a typed, namespaced key-value state machine replicated by Raft (one per group)."""
