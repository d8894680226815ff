"""The runtime: the robot actor process, the learner, the single-process runner, metrics and
reports. Builds processes out of the layers below.
"""
