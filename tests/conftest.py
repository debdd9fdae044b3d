"""Shared fixtures. All skips live here: optional dependencies are requested as fixtures."""
import pytest


@pytest.fixture(scope="session")
def torch():
    """torch, or skip: needed by the Hugging Face extraction (``identirep[hf]``)."""
    return pytest.importorskip("torch", reason="torch is not installed (pip install 'identirep[hf]')")


@pytest.fixture(scope="session")
def transformers(torch):
    """transformers (with torch), or skip."""
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'identirep[hf]')")


@pytest.fixture(scope="session")
def ml_dtypes():
    """ml_dtypes (NumPy bfloat16), or skip."""
    return pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")


@pytest.fixture(scope="session")
def hf_class(transformers):
    """hf_class(name): a transformers class, or skip when this transformers version lacks it."""
    def get(name):
        cls = getattr(transformers, name, None)
        if cls is None:
            pytest.skip(f"transformers {transformers.__version__} has no {name}")
        return cls
    return get
