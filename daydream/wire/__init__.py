"""The wire between robots and the workstation: codec, ZeroMQ transport, CURVE keys, the
robot-side outbox and the workstation-side gateway. No torch, no Ray.
"""
