"""The fused CPU row kernel (cpu_rowstats.cpp): built once with torch's cpp_extension, else absent.

`row_kernel()` returns the compiled module, or None where it cannot run (no x86 AVX2/FMA, no C++
compiler or ninja, ATTNVIS_CPU_FUSED=0); torch_stats then uses its pure-torch ops, which compute the
same numbers (tests compare the two against the fp64 oracle).

The build belongs to set-up: `make setup` calls build() (~1 min, once). Its folder under
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) is named after a hash of the source, the
flags and the torch version, so checkouts on one machine share a build when they agree and never
rebuild each other's. row_kernel() only imports a finished build: an analysis never compiles; without
one it uses the torch ops and says so once in the log.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
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


CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")   # OpenMP: at::parallel_for splits rows


def build_name() -> str:
    """Extension name keyed by what the binary depends on: source, flags, torch and Python versions."""
    import sys

    import torch
    h = hashlib.sha1(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}".encode())
    return f"attnvis_cpu_rowstats_{h.hexdigest()[:12]}"


def build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory
    return Path(_get_build_directory(build_name(), verbose=False))


def _import_built():
    """Import the finished build of this source, or None; never compiles."""
    import torch  # noqa: F401  (the extension links against libtorch)
    name = build_name()
    so = build_dir() / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if not so.is_file():
        so = next(iter(sorted(build_dir().glob(f"{name}*.so"))), None) if build_dir().is_dir() else None
        if so is None:
            return None
    spec = importlib.util.spec_from_file_location(name, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build():
    """Compile the kernel (set-up only: `make setup`); returns the module or raises."""
    from torch.utils.cpp_extension import load
    _ninja_on_path()
    with _LOCK:
        _STATE.clear()
        return load(name=build_name(), sources=[str(SOURCE)], verbose=False, extra_cflags=list(CFLAGS))


def row_kernel():
    """The built module, or None (see unavailable_reason())."""
    if not enabled():
        return None
    with _LOCK:
        if "module" not in _STATE:
            _STATE["module"], _STATE["reason"] = None, None
            if not _cpu_has_avx2_fma():
                _STATE["reason"] = "this CPU has no AVX2/FMA"
            else:
                try:
                    _STATE["module"] = _import_built()
                    if _STATE["module"] is None:
                        _STATE["reason"] = "not built (run `make setup`)"
                except Exception as exc:  # a broken or foreign build: the torch ops still work
                    _STATE["reason"] = f"build unusable: {str(exc).strip()[:200]}"
            if _STATE["reason"] is not None:
                log.warning("fused CPU row kernel unavailable (%s); using torch ops", _STATE["reason"])
        return _STATE["module"]


def unavailable_reason() -> Optional[str]:
    if not enabled():
        return "disabled by ATTNVIS_CPU_FUSED=0"
    row_kernel()
    return _STATE.get("reason")


def report(build_if_missing: bool = False) -> str:
    """One line for set-up logs and diagnostics; with build_if_missing (set-up) it compiles first."""
    if build_if_missing and enabled() and _cpu_has_avx2_fma() and _import_built() is None:
        try:
            build()
        except Exception as exc:  # no compiler, no ninja, no headers: the torch ops still work
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            return f"fused CPU row kernel: not used (build failed: {last[:200]})"
    return "fused CPU row kernel: " + ("in use" if row_kernel() is not None else f"not used ({unavailable_reason()})")
