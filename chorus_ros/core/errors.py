"""Exception classes of chorus_ros. Every domain failure raises one of these, with a message
that names the bad value, so nodes can log it and keep running."""


class ChorusError(Exception):
    """Base class of all chorus_ros errors."""


class InvalidInputError(ChorusError, ValueError):
    """Input data is malformed (wrong shape, non-finite, missing field, bad size...)."""


class DatasetError(InvalidInputError):
    """An outside dataset folder (scene folder, labels map, PLY map with ground truth) is
    malformed; the message names the offending file."""


class MapCapacityError(ChorusError):
    """A GaussianMap would exceed its configured capacity."""


class UnknownIdError(ChorusError, KeyError):
    """An operation named Gaussian ids that the map does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown id"


class CheckpointError(ChorusError):
    """A checkpoint is missing, inconsistent with its config, or has wrong keys."""


class BackendUnavailableError(ChorusError, RuntimeError):
    """A forced backend (gsplat, spconv CUDA, open_clip...) cannot run on this machine."""


class RegistryError(ChorusError, KeyError):
    """An unknown key was asked of a registry; the message lists the known keys."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown registry key"


class EncodeError(ChorusError):
    """Encoding the map failed; ``ids`` holds the Gaussian ids that caused it when known (``[]``
    otherwise), so a node can name them and keep serving the last good encoding."""

    def __init__(self, message: str, ids=()) -> None:
        super().__init__(message)
        self.ids = [int(i) for i in ids]
