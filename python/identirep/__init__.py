"""identirep: closeness in distribution and representational similarity of softmax-family models."""
from .errors import IdentirepError
from .model import Model

__all__ = ["IdentirepError", "Model"]
