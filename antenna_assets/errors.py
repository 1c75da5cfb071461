class StackError(RuntimeError):
    """A failure of the local stack whose message says what is wrong and what to do."""
