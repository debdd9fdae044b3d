"""identirep: closeness in distribution and representational similarity of softmax-family models.

The public API is re-exported here once; no submodule's name is rebound (``identirep.engine``
is the function that returns a ``PairEngine``; the float64 oracle is the module
``identirep.reference``). Extraction from Hugging Face models is ``identirep.extract.extract``;
``matrix`` and ``compare`` on a Dask cluster are ``identirep.dask.matrix`` and
``identirep.dask.compare`` (``identirep[dask]``); the torchmetrics Metric is
``identirep.metrics.IdentirepMetric`` (``identirep[torchmetrics]``).
"""
from . import constructions, reference
from ._build import build_info
from ._matrix import MatrixResult, matrix
from .accumulate import Accumulator
from ._pair import PairEngine
from .errors import IdentirepError, IdentirepWarning
from .io import load_metadata, load_model, save_model
from .measures import compare, d_llv, d_logit, d_rep, d_svd, engine, kl, mcca
from .model import Model, allow_tokenizer_mismatch
from .moments import Moments
from .results import (DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult,
                      Report, TokenReport)

__all__ = [
    "Model", "IdentirepError", "IdentirepWarning", "kl", "d_llv", "d_svd", "mcca", "d_logit", "d_rep", "compare",
    "engine", "PairEngine", "Moments", "constructions", "reference", "Report", "KLResult",
    "DLLVResult", "DSVDResult", "MCCAResult", "DLogitResult", "DRepResult", "TokenReport",
    "load_model", "save_model", "load_metadata", "matrix", "MatrixResult", "build_info",
    "Accumulator", "allow_tokenizer_mismatch",
]


def __getattr__(name):
    # __version__ on first use: importing the command line here would make
    # "python -m identirep.cli" run a second copy of it
    if name == "__version__":
        from .cli import package_version
        globals()["__version__"] = version = package_version()
        return version
    raise AttributeError(f"module 'identirep' has no attribute {name!r}")
