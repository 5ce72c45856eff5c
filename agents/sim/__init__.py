"""The mesh simulator: the router's strategy objects against modelled runtimes, network and signals (sans-IO)."""
