"""The project's error type for bad input: a message naming the bad value and what is allowed."""


class FalseDemoError(ValueError):
    """Raised for bad user input (settings, dataset keys, model args, data folders, ...).

    A ``ValueError`` so callers that already handle those keep working; the CLI
    prints it as one line instead of a traceback.
    """


def error_summary(error: BaseException, width: int = 120) -> str:
    """``Type: first sentence`` of a library's error, for a one-line message about a damaged file (parsers such
    as torch's add paragraphs of advice; the file's name and what to do come from our message)."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    if len(sentence) > width:
        sentence = sentence[: width - 3] + "..."
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__
