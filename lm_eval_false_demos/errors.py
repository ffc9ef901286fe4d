"""The project's error type for bad input: a message naming the bad value and what is allowed."""


class FalseDemoError(ValueError):
    """Raised for bad user input (settings, dataset keys, model args, data folders, ...).

    A ``ValueError`` so callers that already handle those keep working; the CLI
    prints it as one line instead of a traceback.
    """
