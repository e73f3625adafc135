"""The one exception type for mistakes a user can fix (bad input, bad flag, missing file)."""

from safetensors import SafetensorError

# What loading a model folder raises when its files are missing, malformed or cut short (a
# half-copied download): transformers' OSError and ValueError, and safetensors' own error for a
# truncated weights file.
MODEL_LOAD_ERRORS = (OSError, ValueError, SafetensorError)


class InputError(Exception):
    """A problem with the user's input or arguments.

    Stage scripts print its message without a traceback and exit with status 2. The message
    says what is wrong, where (``file:line`` and field where there is one) and what to do.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


def first_line(error: BaseException) -> str:
    """A library exception's message cut to its first line for a one-line error (its type when empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
