"""identirep: closeness in distribution and representational similarity of softmax-family models."""
from .errors import IdentirepError
from .model import Model
from ._build import build_info

__all__ = ["IdentirepError", "Model", "build_info"]
