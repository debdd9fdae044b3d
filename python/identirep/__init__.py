"""identirep: closeness in distribution and representational similarity of softmax-family models."""
from . import constructions, reference
from ._build import build_info
from .errors import IdentirepError
from .io import load_metadata, load_model, save_model
from .matrix import MatrixResult, matrix
from .measures import compare, d_llv, d_logit, d_rep, d_svd, engine, kl, mcca
from .model import Model
from .moments import Moments
from .results import (DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult,
                      Report)

# Extraction from Hugging Face models: identirep.extract.extract (not re-exported, so that
# `identirep.extract` stays the module).
__all__ = [
    "Model", "IdentirepError", "kl", "d_llv", "d_svd", "mcca", "d_logit", "d_rep", "compare",
    "engine", "Moments", "constructions", "reference", "Report", "KLResult", "DLLVResult",
    "DSVDResult", "MCCAResult", "DLogitResult", "DRepResult", "load_model", "save_model",
    "load_metadata", "matrix", "MatrixResult", "build_info",
]
