"""Raft consensus for the policy store: a sans-IO core (`core.RaftNode`), durable storage and gRPC transport."""
