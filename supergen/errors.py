"""Exception types. Each also inherits the builtin a caller would naturally catch."""


class SupergenError(Exception):
    """Base class of every error raised by supergen."""


class SpecError(SupergenError, ValueError):
    """A render request field is invalid. `field` names it, so CLIs and APIs can point at it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"`{field}`: {message}")

    def __reduce__(self):  # survive pickling across Dask workers
        return (type(self), (self.field, str(self).split(": ", 1)[1]))


class BackendError(SupergenError, ValueError):
    """The model cannot do what the request asks (tile size, conditioning, scheduler)."""
