"""identirep: closeness in distribution and representational similarity of softmax-family models."""
from .errors import IdentirepError
from .io import load_metadata, load_model, save_model
from .model import Model

__all__ = ["IdentirepError", "Model", "load_model", "save_model", "load_metadata"]
# Extraction from Hugging Face models: identirep.extract.extract (the module keeps its name;
# it is not re-exported so that `identirep.extract` stays the module).
