"""The project's error base class: anything raised as a :class:`PumaError` is a user-facing
problem (bad config, bad file, incompatible bank) and the CLI prints it as one line."""


class PumaError(ValueError):
    """A user-facing error whose message names the file, line or key at fault."""
