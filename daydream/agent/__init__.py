"""The agent: networks, distributions, RSSM, world model, contrastive objectives, behaviour,
the Agent and its checkpoints. Torch only: never ZeroMQ or Ray.
"""
