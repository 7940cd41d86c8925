"""``classify_paced``: the built-in ``classify`` task, pausing after every epoch.

Its values and checkpoints are classify's own (the pause changes no computation), so a test
can kill a driver or a worker mid-trial without depending on how fast the machine trains.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from tasks import classify, distributed
from tasks.events import Event, Metrics
from tasks.registry import register

#: Seconds after each epoch's Metrics: a 40-epoch trial lasts at least 10 s.
PACE_S = 0.25


@register("classify_paced", classify.ClassifySpec)
def paced(
    spec: classify.ClassifySpec,
    dist: distributed.DistContext | None = None,
    resume: bytes | None = None,
) -> Iterator[Event]:
    """``classify``, with a pause after each epoch; data-parallel and resumes like it."""
    for event in classify.run(spec, dist=dist, resume=resume):
        yield event
        if isinstance(event, Metrics):
            time.sleep(PACE_S)
