"""A code location for the instance queue test: a job tagged exactly like `speed_layer_job`, which
holds its run slot until a file appears, so the queue can be watched without starting Spark."""

import time
from pathlib import Path

import dagster as dg

from antenna_assets.jobs import STREAMING_TAG, speed_layer_job


class HoldConfig(dg.Config):
    release_file: str
    timeout_seconds: float = 120


@dg.op
def hold_until_released(config: HoldConfig) -> None:
    """Runs until `release_file` exists, like a stream until it is stopped."""
    deadline = time.monotonic() + config.timeout_seconds
    while not Path(config.release_file).exists():
        if time.monotonic() > deadline:
            raise dg.Failure(f"{config.release_file} never appeared")
        time.sleep(0.2)


@dg.job(tags={STREAMING_TAG: speed_layer_job.tags[STREAMING_TAG]})
def streaming_stand_in():
    hold_until_released()


defs = dg.Definitions(jobs=[streaming_stand_in])
