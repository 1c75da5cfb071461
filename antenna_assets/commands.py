"""Sub-commands of `antenna` contributed by the pipeline's layers."""


def registered_commands():
    from antenna_assets.demo import register as register_demo
    from antenna_assets.operators.cli import register as register_operators
    from antenna_assets.simulator.cli import register as register_simulate
    from antenna_assets.streaming.cli import register as register_stream

    return [register_simulate, register_stream, register_demo, register_operators]
