"""Sub-commands of `antenna` contributed by the pipeline's layers."""


def registered_commands():
    from antenna_assets.simulator.cli import register as register_simulate

    return [register_simulate]
