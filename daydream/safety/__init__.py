"""Safety on the robot side: the supervisor every command passes, the keyboard and the remote
console that stop, reset and take over a robot.
"""
