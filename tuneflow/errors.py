"""User-facing errors: the message names the file, line or config key that is wrong."""


class TuneflowError(Exception):
    """An error caused by the user's input (data, config or model), not by a bug.

    Entry points print only the message (no traceback) and exit with status 2.
    """


class DataError(TuneflowError):
    """A malformed raw data file or record."""

    def __init__(self, path, problem, line=None, index=None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if index is not None:
            where += f", record {index}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.index, self.problem = str(path), line, index, problem

    def __reduce__(self):  # raised in a worker process (tuneflow.parallel), re-raised in the job's own
        return DataError, (self.path, self.problem, self.line, self.index)


class ConfigError(TuneflowError):
    """A config value that is invalid; `key` is the dotted path to it."""

    def __init__(self, key, problem):
        super().__init__(f"config key '{key}': {problem}" if key else f"config: {problem}")
        self.key, self.problem = key, problem

    def __reduce__(self):
        return ConfigError, (self.key, self.problem)


class ModelError(TuneflowError):
    """A base model or tokenizer that cannot be used as configured."""
