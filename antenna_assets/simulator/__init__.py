"""The device traffic simulator: the contract's usage messages into Kafka, plus their ground truth."""

from antenna_assets.simulator.config import SimulatorConfig, SimulatorConfigError
from antenna_assets.simulator.ground_truth import GroundTruth, Totals
from antenna_assets.simulator.messages import EXTRA_FIELD, MALFORMED_KINDS, MESSAGE_FIELDS
from antenna_assets.simulator.producer import SimulationError
from antenna_assets.simulator.runner import SimulationResult, run_simulation, simulate

__all__ = [
    "EXTRA_FIELD", "MALFORMED_KINDS", "MESSAGE_FIELDS", "GroundTruth", "SimulationError", "SimulationResult",
    "SimulatorConfig", "SimulatorConfigError", "Totals", "run_simulation", "simulate",
]
