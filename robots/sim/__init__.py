"""Simulated robots that run the unchanged drivers against simulated controllers.

- ``sim_ur5.py``: a UR5 controller behind the ur_rtde method subset, with ``scene.py``
  (table, two bins, cubes, top-down camera), ``gripper_server.py`` (a Robotiq URCap
  socket on loopback) and ``rtde_server.py`` (the RTDE protocol on loopback, so the real
  ``rtde_receive.RTDEReceiveInterface`` can connect to the simulated state).
"""
