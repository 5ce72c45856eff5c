"""SWIM membership with Lifeguard: a sans-IO core (`swim`), its wire codec, keyring and asyncio driver."""
