"""One model of the AWS control plane our scaling depends on, written from AWS's documentation.

Each module has one job and cites the AWS page behind each rule:

* ``clock``: the simulated time axis (an event queue);
* ``alarms``: CloudWatch metric datapoints and alarm evaluation (period, M of N, TreatMissingData, CloudWatch's
  own evaluation schedule);
* ``target_tracking`` and ``step_scaling``: what one Application Auto Scaling policy asks for when its alarm
  acts, with its cooldowns;
* ``autoscaling``: a scalable target with its policies (alarms evaluated each minute, actions repeated while in
  ALARM, the largest capacity wins, min/max);
* ``ecs``: an ECS service (desired vs running tasks, start latency, scale-in victims, task protection);
* ``workers``: Prefect workers polling inside the tasks, and the runs they hold (``runs``: the Prefect side).
* ``deployed``: our scalable target and policies as the synthesized template deploys them, as this model's specs.

Nothing here reads the publisher's code: the publisher (or any other policy) is a caller that publishes
datapoints and calls the ECS protection API, as it would against AWS. docs/aws-model.md lists what is
modelled and what is not.
"""
