"""Sub-commands of `antenna` contributed by the pipeline's layers."""


def registered_commands():
    return []
