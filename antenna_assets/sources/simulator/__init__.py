"""The device traffic simulator: the contract's usage messages into Kafka, plus their ground truth.

Names are imported on first use, so registering `antenna simulate` does not load numpy and
librdkafka into every `antenna` command.
"""

from importlib import import_module

_EXPORTS = {
    "SimulatorConfig": "config", "SimulatorConfigError": "config",
    "GroundTruth": "ground_truth", "Totals": "ground_truth",
    "MALFORMED_KINDS": "messages",
    "SimulationError": "producer",
    "SimulationResult": "runner", "run_simulation": "runner", "simulate": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
