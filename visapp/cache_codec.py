"""A cache value format that cannot execute code: JSON plus raw numpy buffers, versioned and signed.

flask-caching/cachelib pickle by default, so anyone who can write to the app's Redis (or its cache
folder) runs code in the web processes when a value is read. This codec is the serializer of both
backends (visapp.state); reading never calls pickle, never imports a name taken from the data and
never builds an object dtype.

Frame:  MAGIC b"ATVC" | version u16 | blake2b-256 MAC of the body | body
Body:   u64 length of the JSON header | JSON header | array buffers, back to back
Header: {"v": tree, "a": [[dtype, shape, offset, nbytes], ...]}

The tree is JSON with a few tagged nodes ({"__t": tag, ...}): ndarray (index into "a"), numpy scalar,
bytes, tuple, set, a dict whose keys are not all strings (or that has a "__t" key), and dataclasses
registered with register() (AttentionResult here; the app registers its own). The MAC is keyed with
the app's secret (ATTNVIS_SECRET_KEY or the generated one), so an entry someone wrote without the key,
a corrupted one or one of another format version reads as missing (None) and is recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import struct
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"ATVC"
VERSION = 1
_HEAD = struct.Struct("<4sH32s")            # magic, version, MAC
_LEN = struct.Struct("<Q")
ARRAY_KINDS = "biufcUS"                     # bool, numbers, fixed-width text/bytes: never object ('O') or void
MAX_DIMS = 8
_TYPES: dict[str, type] = {}


class CodecError(ValueError):
    """A value this format cannot hold, or bytes that are not a valid frame."""


def register(cls: type) -> type:
    """Allow a dataclass to be stored (by its class name, resolved only through this table)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _TYPES[cls.__name__] = cls
    return cls


def _register_defaults() -> None:
    from compute.result import AttentionResult
    register(AttentionResult)


_register_defaults()


# ---------------------------------------------------------------- encoding

def _encode(x: Any, arrays: list) -> Any:
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int) and not isinstance(x, np.integer):
        return x
    if isinstance(x, float):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in ARRAY_KINDS:
            raise CodecError(f"cannot store an array of dtype {x.dtype}")
        arrays.append(np.ascontiguousarray(x))
        return {"__t": "nd", "i": len(arrays) - 1}
    if isinstance(x, np.generic):
        if x.dtype.kind not in ARRAY_KINDS:
            raise CodecError(f"cannot store a numpy scalar of dtype {x.dtype}")
        return {"__t": "np", "d": x.dtype.str, "v": x.item() if x.dtype.kind != "c" else [x.real.item(), x.imag.item()]}
    if isinstance(x, (bytes, bytearray)):
        arrays.append(np.frombuffer(bytes(x), np.uint8))
        return {"__t": "bytes", "i": len(arrays) - 1}
    if isinstance(x, tuple):
        return {"__t": "tuple", "v": [_encode(v, arrays) for v in x]}
    if isinstance(x, (set, frozenset)):
        return {"__t": "set", "v": [_encode(v, arrays) for v in x]}
    if isinstance(x, list):
        return [_encode(v, arrays) for v in x]
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x) and "__t" not in x:
            return {k: _encode(v, arrays) for k, v in x.items()}
        return {"__t": "items", "v": [[_encode(k, arrays), _encode(v, arrays)] for k, v in x.items()]}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        name = type(x).__name__
        if _TYPES.get(name) is not type(x):
            raise CodecError(f"cannot store {name}: not registered with visapp.cache_codec.register")
        return {"__t": "dc", "n": name,
                "v": {f.name: _encode(getattr(x, f.name), arrays) for f in dataclasses.fields(x) if f.init}}
    raise CodecError(f"cannot store a value of type {type(x).__name__}")


def dumps(value: Any, key: bytes) -> bytes:
    """The frame of a value; CodecError for anything but data (the caller's bug, raised loudly)."""
    arrays: list[np.ndarray] = []
    tree = _encode(value, arrays)
    meta, offset = [], 0
    for a in arrays:
        meta.append([a.dtype.str, list(a.shape), offset, a.nbytes])
        offset += a.nbytes
    header = json.dumps({"v": tree, "a": meta}, ensure_ascii=True, separators=(",", ":"),
                        allow_nan=True).encode("ascii")
    body = b"".join([_LEN.pack(len(header)), header] + [a.tobytes() for a in arrays])
    return _HEAD.pack(MAGIC, VERSION, _mac(key, body)) + body


# ---------------------------------------------------------------- decoding

def _mac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, key=key[:64]).digest()


def _array(meta, buf: memoryview, data_start: int) -> np.ndarray:
    if not (isinstance(meta, list) and len(meta) == 4):
        raise CodecError("bad array header")
    dtype_s, shape, off, nbytes = meta
    dtype = np.dtype(str(dtype_s))
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject:
        raise CodecError(f"array dtype {dtype_s!r} is not allowed")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CodecError("bad array shape")
    if not (isinstance(off, int) and isinstance(nbytes, int) and off >= 0 and nbytes >= 0):
        raise CodecError("bad array offsets")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
        raise CodecError("array size does not match its shape")
    lo = data_start + off
    if lo + nbytes > len(buf):
        raise CodecError("truncated array data")
    return np.frombuffer(buf[lo:lo + nbytes], dtype=dtype).reshape(shape)


def _decode(x: Any, arrays: list) -> Any:
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    if not isinstance(x, dict):
        return x
    tag = x.get("__t")
    if tag is None:
        return {k: _decode(v, arrays) for k, v in x.items()}
    if tag == "nd":
        return arrays[x["i"]]
    if tag == "bytes":
        return arrays[x["i"]].tobytes()
    if tag == "np":
        dtype = np.dtype(str(x["d"]))
        if dtype.kind not in ARRAY_KINDS:
            raise CodecError(f"scalar dtype {x['d']!r} is not allowed")
        v = x["v"]
        return dtype.type(complex(*v) if dtype.kind == "c" else v)
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in x["v"])
    if tag == "set":
        return {_hashable(_decode(v, arrays)) for v in x["v"]}
    if tag == "items":
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in x["v"]}
    if tag == "dc":
        cls = _TYPES.get(x["n"])
        if cls is None:
            raise CodecError(f"unknown stored type {x['n']!r}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        fields = {k: _decode(v, arrays) for k, v in x["v"].items()}
        if set(fields) - names:
            raise CodecError(f"{x['n']}: unknown fields {sorted(set(fields) - names)}")
        return cls(**fields)
    raise CodecError(f"unknown tag {tag!r}")


def _hashable(k):
    if isinstance(k, list):
        return tuple(_hashable(v) for v in k)
    return k


def loads(data: bytes, key: bytes) -> Any:
    """The value of a frame; CodecError for anything that is not an intact frame of this version
    signed with `key`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("not bytes")
    buf = memoryview(bytearray(data))       # a writable copy: arrays read from it may be changed in place
    if len(buf) < _HEAD.size + _LEN.size:
        raise CodecError("too short")
    magic, version, mac = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CodecError("not an attnvis cache frame (a pickle, or another format)")
    if version != VERSION:
        raise CodecError(f"format version {version}, this code reads {VERSION}")
    body = buf[_HEAD.size:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise CodecError("checksum mismatch (corrupted, or written without this app's secret)")
    (n,) = _LEN.unpack_from(body, 0)
    start = _LEN.size
    if start + n > len(body):
        raise CodecError("truncated header")
    try:
        header = json.loads(bytes(body[start:start + n]).decode("ascii"))
        arrays = [_array(m, body, start + n) for m in header["a"]]
        return _decode(header["v"], arrays)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise CodecError(f"malformed frame ({exc.__class__.__name__}: {exc})") from None


# ---------------------------------------------------------------- cachelib serializer

class Serializer:
    """cachelib serializer (dumps/loads for Redis, dump/load for FileSystemCache) over this codec.
    An unreadable value loads as None (cachelib's 'missing'); visapp.hardening.SafeStore then deletes
    the entry."""

    def __init__(self, key: bytes):
        self.key = key

    def dumps(self, value: Any, *args) -> bytes:
        return dumps(value, self.key)

    def loads(self, data: Optional[bytes]) -> Any:
        if data is None:
            return None
        try:
            return loads(data, self.key)
        except CodecError as exc:
            log.warning("unreadable cache value ignored: %s", exc)
            return None

    def dump(self, value: Any, f, *args) -> None:
        f.write(self.dumps(value))

    def load(self, f) -> Any:
        return self.loads(f.read())
