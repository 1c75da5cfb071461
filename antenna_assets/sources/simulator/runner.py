"""`run_simulation`: plan the run, send it from one or more processes, merge their ground truths."""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from antenna_assets.sources.simulator.config import SimulatorConfig
from antenna_assets.sources.simulator.ground_truth import GroundTruth, TruthAccumulator
from antenna_assets.sources.simulator.messages import MALFORMED_KINDS
from antenna_assets.sources.simulator.producer import SimulationError, prepare_topic
from antenna_assets.sources.simulator.progress import ProgressLine
from antenna_assets.sources.simulator.schedule import SimulationPlan
from antenna_assets.sources.simulator.worker import WorkerResult, run_worker

# spawn, not fork: the parent may hold librdkafka or JVM threads, which a forked child inherits broken.
_CONTEXT = multiprocessing.get_context("spawn")
JOIN_TIMEOUT_SECONDS = 30


@dataclass
class SimulationResult:
    truth: GroundTruth
    produced: int  # messages sent, valid and malformed
    seconds: float  # from the first message sent to the last one acknowledged
    processes: int

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0


def run_simulation(config: SimulatorConfig) -> GroundTruth:
    """Send the configured traffic to Kafka and return what was sent, aggregated."""
    return simulate(config).truth


def simulate(config: SimulatorConfig) -> SimulationResult:
    """`run_simulation` with the throughput figures; raises SimulationError if a message was lost."""
    config.validate()
    prepare_topic(config.bootstrap, config.topic, config.kafka_client)
    plan = SimulationPlan.from_config(config, now=time.time())
    sent = _CONTEXT.Array("q", plan.processes, lock=False)
    stop_event = threading.Event() if plan.processes == 1 else _CONTEXT.Event()
    with _stop_on_interrupt(stop_event), ProgressLine(sent, config.progress, plan.planned_messages):
        if plan.processes == 1:
            results = [run_worker(plan, 0, sent, stop_event)]
        else:
            results = _run_processes(plan, sent, stop_event)
    truth = TruthAccumulator(plan.users, len(plan.antenna_ids), len(plan.apps), len(MALFORMED_KINDS))
    for result in results:
        truth.merge(result.truth)
    undelivered = sum(r.undelivered for r in results)
    if undelivered:
        error = next(r.last_error for r in results if r.last_error)
        raise SimulationError(f"{undelivered:,} of {sum(r.produced for r in results):,} messages were not delivered "
                              f"to {config.topic} on {config.bootstrap}: {error}")
    ground_truth = truth.ground_truth(plan.user_ids, plan.antenna_ids, plan.apps, MALFORMED_KINDS, plan.seed)
    if config.ground_truth_path:
        ground_truth.to_json(config.ground_truth_path)
    starts = [r.first_send for r in results if r.first_send is not None]
    seconds = max(r.finished for r in results) - min(starts) if starts else 0.0
    return SimulationResult(ground_truth, sum(r.produced for r in results), seconds, plan.processes)


@contextmanager
def _stop_on_interrupt(stop_event):
    """Ctrl-C ends the run cleanly: workers finish the current tick, flush, and report."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop_event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_process(plan: SimulationPlan, worker: int, sent, stop_event, results) -> None:
    # The parent turns Ctrl-C into stop_event; a terminal's SIGINT to the whole group must not kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        results.put((worker, run_worker(plan, worker, sent, stop_event), None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((worker, None, f"{type(exc).__name__}: {exc}"))


def _run_processes(plan: SimulationPlan, sent, stop_event) -> list[WorkerResult]:
    results_queue = _CONTEXT.Queue()
    processes = [_CONTEXT.Process(target=_worker_process, args=(plan, w, sent, stop_event, results_queue),
                                  name=f"simulator-{w}", daemon=True) for w in range(plan.processes)]
    for process in processes:
        process.start()
    results: dict[int, WorkerResult] = {}
    errors: list[str] = []
    try:
        while len(results) + len(errors) < len(processes):
            try:
                worker, result, error = results_queue.get(timeout=0.5)
            except queue.Empty:
                crashed = [p for p in processes if p.exitcode not in (None, 0)]
                if crashed:
                    stop_event.set()
                    raise SimulationError(f"simulator process {crashed[0].name} died (exit code {crashed[0].exitcode})")
                continue
            if error:
                stop_event.set()  # the others stop too: the run cannot be complete
                errors.append(f"process {worker}: {error}")
            else:
                results[worker] = result
    finally:
        for process in processes:
            process.join(timeout=JOIN_TIMEOUT_SECONDS)
    if errors:
        raise SimulationError("; ".join(errors))
    return [results[w] for w in sorted(results)]
