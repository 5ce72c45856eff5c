"""What the tests and benchmarks run Raft with, not the agent: a seeded simulation of whole groups (sim), a
linearizability checker for recorded histories (lincheck) and a cluster of real agent processes (cluster)."""
