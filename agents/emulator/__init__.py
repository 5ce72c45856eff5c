"""Runtime emulator: a faithful stand-in for vLLM, TGI, Triton or SGLang serving an 8B LLM on a chosen GPU profile."""
