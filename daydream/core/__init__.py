"""The core: spaces and the step record, chunks, atomic file writes, clocks, config.

No torch, ZeroMQ or Ray: every other layer (and every robot driver) may import it.
"""
