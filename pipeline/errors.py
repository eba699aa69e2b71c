"""The error every operator-facing check raises, in a module of its own so that light modules (the store, the
settings) can raise it without importing the spec's models, Pydantic and Polars (~0.35 s a process)."""


class SpecError(ValueError):
    """A campaign spec that cannot be used; the message names the file and the field."""
