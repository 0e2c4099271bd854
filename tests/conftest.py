"""Test-wide setup. TRITON_INTERPRET must be set before anything imports triton, so that the
Triton kernels run on this CPU-only machine (the GPU path is exercised by bench/ on a GPU)."""
import os
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def smollm():
    from compute.models import load_model
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    from compute.models import load_model
    return load_model("minilm-l6")
