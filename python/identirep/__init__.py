"""identirep: closeness in distribution and representational similarity of softmax-family models."""
from .errors import IdentirepError
from .io import load_metadata, load_model, save_model
from .model import Model

__all__ = ["IdentirepError", "Model", "load_model", "save_model", "load_metadata"]
