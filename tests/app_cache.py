"""An empty app result cache for a test module (shared by the app's callback tests)."""
import os

import pytest


def fresh_cache_dir(tmp) -> str:
    """An empty result cache that still reuses the converted GGUF weights (converting costs ~30 s)."""
    from compute.models import cache_dir
    old = os.environ.pop("ATTNVIS_CACHE_DIR", None)
    try:
        real = cache_dir() / "gguf"
    finally:
        if old is not None:
            os.environ["ATTNVIS_CACHE_DIR"] = old
    real.mkdir(parents=True, exist_ok=True)
    (tmp / "gguf").symlink_to(real, target_is_directory=True)
    return str(tmp)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """ATTNVIS_CACHE_DIR pointed at a fresh cache for the module, restored afterwards."""
    old = os.environ.get("ATTNVIS_CACHE_DIR")
    os.environ["ATTNVIS_CACHE_DIR"] = fresh_cache_dir(tmp_path_factory.mktemp("attnvis-cache"))
    from visapp import state
    state.reset()
    yield
    if old is None:
        os.environ.pop("ATTNVIS_CACHE_DIR", None)
    else:
        os.environ["ATTNVIS_CACHE_DIR"] = old
    state.reset()
