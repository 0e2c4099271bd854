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


# The fast loop: `make test-unit` runs what needs no model, server or browser. A test is 'integration'
# when it loads a real model (the smollm/minilm fixtures) or lives in a module that starts processes or
# runs the CLI; 'e2e' tests drive chromium (tests/e2e). `make test` runs everything.
INTEGRATION_MODULES = ("test_deploy_", "test_cli_", "test_export_", "test_app_callbacks", "test_fuzz_",
                       "test_analysis_cli", "test_analysis_models", "test_capture_models", "test_variants_model",
                       "test_pipeline", "test_safety_", "test_tracing_cli", "test_bench")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rsplit(".", 1)[-1]
        if "e2e" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.e2e)
        elif name.startswith(INTEGRATION_MODULES) or {"smollm", "minilm"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
