"""The supervisor process: forks the front and the workers, reaps, restarts, reloads, stops.

``pool`` is the pure planner (inputs in, actions out, a fake clock in tests); ``process`` is
the process that acts on it. Invariant: nothing here imports ``front``, ``worker`` or grpc,
and no plugin code runs here (the supervisor forks, so it must stay grpc-free).
"""
