"""prefect-ecs-worker: ``prefect worker start`` inside an ECS task, protecting the task while it holds runs.

Importing this package does not import Prefect: the pure parts (task naming, options, the refresh schedule,
the agent client) work without it; only ``prefect_ecs_worker.hook`` needs it.
"""

__version__ = "0.1.0"
