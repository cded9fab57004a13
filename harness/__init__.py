"""Real parts for tests, the demo and the benchmark: Prefect servers on loopback, backlogs built through the
REST API, a fault-injecting proxy and real Process workers. Nothing here imports prefect itself: each server
and worker runs from its own virtualenv."""
