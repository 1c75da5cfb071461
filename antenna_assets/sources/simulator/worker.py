"""One producing process: renders and sends its blocks of ticks, accumulates what it sent."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from antenna_assets.sources.simulator.ground_truth import TruthAccumulator
from antenna_assets.sources.simulator.messages import MALFORMED_KINDS, MessageRenderer, draw_block
from antenna_assets.sources.simulator.producer import DeliveringProducer
from antenna_assets.sources.simulator.schedule import SimulationPlan


@dataclass
class WorkerResult:
    truth: TruthAccumulator
    produced: int
    undelivered: int
    last_error: str | None
    first_send: float | None  # epoch seconds of the first produce call
    finished: float  # epoch seconds when every message was acknowledged


def run_worker(plan: SimulationPlan, worker: int, sent_counter, stop_event) -> WorkerResult:
    """Send this worker's blocks until the plan ends or `stop_event` is set.

    `sent_counter[worker]` is raised after every tick for the progress line.
    """
    renderer = MessageRenderer(plan.user_ids, plan.antenna_ids, plan.apps)
    truth = TruthAccumulator(plan.users, len(plan.antenna_ids), len(plan.apps), len(MALFORMED_KINDS))
    producer = DeliveringProducer(plan.bootstrap, plan.topic, {**plan.kafka_client, **plan.producer_options},
                                  plan.kafka_client)
    users, block_size = plan.users, plan.ticks_per_block * plan.users
    produced, first_send, stopped = 0, None, False
    for block in plan.blocks_of(worker):
        draws = draw_block(plan.seed, block, block_size, len(plan.antenna_ids), len(plan.apps),
                           plan.malformed_fraction, plan.extra_field_fraction)
        antennas, nbytes, apps = draws.antenna.tolist(), draws.nbytes.tolist(), draws.app.tolist()
        special = np.flatnonzero((draws.malformed_kind >= 0) | draws.extra).tolist()
        next_special = 0
        timestamps: list[int] = []  # per sent tick
        sent = 0  # messages of this block sent so far
        for tick in plan.ticks_of(block):
            count = plan.messages_in(tick)
            if count == 0 or stop_event.is_set() or (plan.wall_deadline and time.time() >= plan.wall_deadline):
                stopped = True
                break
            send_at = plan.send_at(tick)
            if send_at is not None:
                delay = send_at - time.time()
                if delay > 0 and stop_event.wait(delay):
                    stopped = True
                    break
            timestamp = int(plan.due(tick)) if plan.backfill else int(time.time())
            lo = (tick - block * plan.ticks_per_block) * users
            values = renderer.render_tick(timestamp, antennas[lo:lo + count], nbytes[lo:lo + count], apps[lo:lo + count])
            while next_special < len(special) and special[next_special] < lo + count:
                i = special[next_special]
                values[i - lo] = renderer.render_special(timestamp, i - lo, antennas[i], nbytes[i], apps[i],
                                                         int(draws.malformed_kind[i]), int(draws.detail[i]))
                next_special += 1
            if first_send is None:
                first_send = time.time()
            producer.send(values)
            timestamps.append(timestamp)
            sent = lo + count
            sent_counter[worker] += count
        if sent:
            truth.add(np.repeat(np.asarray(timestamps, dtype=np.int64), users)[:sent], np.arange(sent) % users,
                      draws.antenna[:sent], draws.app[:sent], draws.nbytes[:sent], draws.malformed_kind[:sent],
                      draws.extra[:sent])
            produced += sent
        if stopped:
            break
    undelivered = producer.close()
    return WorkerResult(truth, produced, undelivered, producer.last_error, first_send, time.time())
