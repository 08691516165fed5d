"""The exceptions pvtv2 raises for bad input: each carries one line saying what is wrong and how to fix it."""


class PVTError(Exception):
    """Base class; the command line prints ``error: <message>`` and exits with status 2."""


class CheckpointError(PVTError):
    """A checkpoint that cannot be read, is not ours to read, or does not fit the model."""


class DataError(PVTError):
    """A dataset, image or annotation file that cannot be used."""


class TrainingError(PVTError):
    """A run that cannot go on (a NaN loss, a resume that does not match)."""


class UnknownModelError(PVTError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
