"""The one error of data preparation."""


class DataPreparationError(ValueError):
    """A problem with the raw data or the environment, described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))
