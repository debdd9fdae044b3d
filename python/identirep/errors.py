"""Exceptions raised by identirep, and the messages several layers share."""


class IdentirepError(ValueError):
    """Bad input: the message says what is wrong and how to fix it. ``reason`` is what is
    wrong; ``fix``, when given apart, how to fix it (the message then ends with it)."""

    def __init__(self, message: str, fix: str = None):
        self.reason, self.fix = message, fix
        super().__init__(message if fix is None else f"{message}; fix: {fix}")

    def __reduce__(self):
        # pickled with reason and fix apart (a Dask worker's or another rank's error arrives
        # as it was raised)
        return type(self), (self.reason, self.fix)


class IdentirepWarning(UserWarning):
    """A result computed as asked, with something its reader should know that the result has
    no field for (a measure called on its own has no notes): the message says what."""


#: what to install for the GPU backends
CUPY_INSTALL = ("pip install 'cupy-cuda13x[ctk]' (CUDA 13 drivers) or 'cupy-cuda12x[ctk]' "
                "(CUDA 12), or identirep[cupy]; [ctk] brings cuBLAS and cuSOLVER")


def why(e: BaseException, limit: int = 0) -> str:
    """An exception in one line: its type and the first line of its message (at most
    ``limit`` characters of it when given)."""
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:limit] if limit else first}"
