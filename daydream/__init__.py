"""daydream: world-model reinforcement learning on real robots."""

__version__ = "0.1.0"
