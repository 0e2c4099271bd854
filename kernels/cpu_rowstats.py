"""The fused CPU row kernel (cpu_rowstats.cpp): built once with torch's cpp_extension, else absent.

`row_kernel()` returns the compiled module, or None where it cannot run (no x86 AVX2/FMA, no C++
compiler or ninja, ATTNVIS_CPU_FUSED=0); torch_stats then uses its pure-torch ops, which compute the
same numbers (tests compare the two against the fp64 oracle). The build (~1 min) lands in
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); `make setup` builds it ahead of time
(report()) so no analysis waits for the compiler.
"""
from __future__ import annotations

import logging
import os
import sysconfig
import threading
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_rowstats.cpp")
_LOCK = threading.Lock()
_STATE: dict = {}


def enabled() -> bool:
    return os.environ.get("ATTNVIS_CPU_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the pip-installed one sits beside this interpreter, which is not on
    PATH when the venv's python is called directly (as the Makefile does)."""
    try:
        import ninja
        where = ninja.BIN_DIR
    except (ImportError, AttributeError):
        where = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "")
    if where and where not in path.split(os.pathsep):
        os.environ["PATH"] = where + os.pathsep + path


def _build():
    from torch.utils.cpp_extension import load
    _ninja_on_path()
    return load(name="attnvis_cpu_rowstats", sources=[str(SOURCE)], verbose=False,
                extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"])   # OpenMP: at::parallel_for splits rows


def row_kernel():
    """The compiled module, or None (see unavailable_reason())."""
    if not enabled():
        return None
    with _LOCK:
        if "module" not in _STATE:
            _STATE["module"], _STATE["reason"] = None, None
            if not _cpu_has_avx2_fma():
                _STATE["reason"] = "this CPU has no AVX2/FMA"
            else:
                try:
                    _STATE["module"] = _build()
                except Exception as exc:  # no compiler, no ninja, no headers: the torch ops still work
                    last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    _STATE["reason"] = f"build failed: {last[:200]}"
                    log.warning("fused CPU row kernel unavailable (%s); using torch ops", _STATE["reason"])
        return _STATE["module"]


def unavailable_reason() -> Optional[str]:
    if not enabled():
        return "disabled by ATTNVIS_CPU_FUSED=0"
    row_kernel()
    return _STATE.get("reason")


def report() -> str:
    """One line for set-up logs and `python -m compute` diagnostics; builds the kernel if needed."""
    return "fused CPU row kernel: " + ("in use" if row_kernel() is not None else f"not used ({unavailable_reason()})")
