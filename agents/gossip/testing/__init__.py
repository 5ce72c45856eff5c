"""What the tests and benchmarks run gossip with, not the agent: a seeded simulation of the SWIM protocol over a
modelled network (sim) and a UDP/TCP proxy that injects loss, delay and partitions between real processes
(faultproxy)."""
