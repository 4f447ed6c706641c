"""The exceptions lit_finetune raises for bad input: the CLI prints their message without a traceback."""


class LitFinetuneError(Exception):
    """Base class: a problem with the user's input, explained in the message."""


class ConfigError(LitFinetuneError, ValueError):
    """A config key has a value that cannot work (names the key and what was expected)."""


class DataError(LitFinetuneError, ValueError):
    """A data file or dataset is missing or malformed (names the file, row and column)."""
