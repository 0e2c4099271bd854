"""The catalogue of attention variants and the spec strings that name them.

Spec grammar (case-insensitive names, no spaces needed):
    NAME                      e.g. elu, efficient, hedgehog, softmax
    NAME:VALUE                the variant's first parameter, e.g. window:64, topk:32, temperature:0.5
    NAME:KEY=VALUE,KEY=VALUE  e.g. moba:block=64,blocks=4, performer:m=64
    sinks:S+window:W          StreamingLLM (also streaming:sinks=S,window=W)
A list of specs is separated by ',' or ';' (a 'key=value' piece continues the previous spec, so
"moba:block=64,blocks=4,elu" is two specs). Errors raise compute.errors.InputError with one clear line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..errors import InputError
from . import hedgehog, linear, masking, reweight


@dataclass(frozen=True)
class Param:
    name: str
    type: type                  # int or float
    default: Optional[float]    # None: must be given
    help: str
    lo: float = 0               # smallest allowed value (inclusive unless lo_open)
    lo_open: bool = False
    hi: Optional[float] = None  # largest allowed value (inclusive): a cap that bounds the work

    def check(self, variant: str, v):
        capped = self.hi is not None and v > self.hi
        if capped or v < self.lo or (self.lo_open and v == self.lo):
            rng = f"{'>' if self.lo_open else '>='} {_num(self.lo)}" + (f" and <= {_num(self.hi)}" if self.hi is not None else "")
            raise InputError(f"{variant}: {self.name} must be {rng}, got {_num(v)}"
                             + (" (the cap that bounds this variant's work)" if capped else ""))
        return v

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help,
                "min": self.lo, "min_exclusive": self.lo_open, "max": self.hi}


@dataclass(frozen=True)
class VariantInfo:
    name: str
    family: str                 # reference | masking | linear | fitted | reweight
    params: tuple
    description: str
    paper: str
    example: str
    cls: Callable

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "params": [p.to_dict() for p in self.params],
                "description": self.description, "paper": self.paper, "example": self.example}


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


MAX_POSITIONS = 1 << 20        # cap of token-count parameters (windows, k, blocks): beyond any text we analyse


def _p(name, typ, default, help, lo=0, lo_open=False, hi=None):
    return Param(name, typ, default, help, lo, lo_open, hi)


VARIANTS: dict[str, VariantInfo] = {v.name: v for v in [
    VariantInfo("softmax", "reference", (), "Exact softmax attention (the reference every variant is compared "
                "with).", "Vaswani et al. 2017, Attention Is All You Need", "softmax", reweight.Softmax),
    VariantInfo("window", "masking", (_p("w", int, None, "keys with distance < w are kept", 1, hi=MAX_POSITIONS),),
                "Sliding window without sinks: each query keeps the keys at distance < w (the failing "
                "baseline of StreamingLLM).", "Beltagy et al. 2020, Longformer; Xiao et al. 2024, StreamingLLM",
                "window:64", masking.Window),
    VariantInfo("streaming", "masking", (_p("sinks", int, 4, "first tokens always kept", 0, hi=MAX_POSITIONS),
                                         _p("window", int, 64, "recent keys kept (distance < window)", 1, hi=MAX_POSITIONS)),
                "Window + attention sinks (StreamingLLM): keep the first S tokens and the last W keys. "
                "Masks the already-rotated q/k, so original RoPE positions are kept (no position-shift "
                "re-rotation inside the cache).", "Xiao et al. 2024, Efficient Streaming Language Models "
                "with Attention Sinks", "sinks:4+window:64", masking.Streaming),
    VariantInfo("topk", "masking", (_p("k", int, None, "keys kept per query row", 1, hi=MAX_POSITIONS),),
                "Top-k per row: each query keeps its k largest logits (exact per-row thresholds).",
                "used by SEA (Lee et al. 2023), HiP, Recycled Attention", "topk:32", masking.TopK),
    VariantInfo("toptheta", "masking", (_p("k", int, None, "average keys kept per row", 1, hi=MAX_POSITIONS),),
                "Top-theta: one static logit threshold per head, calibrated on this text's softmax run to "
                "keep k keys per row on average (each row keeps at least its top key; rows with <= k keys "
                "keep all; no compensation terms).", "Berestizshevsky et al. 2025, Top-Theta Attention",
                "toptheta:32", masking.TopTheta),
    VariantInfo("moba", "masking", (_p("block", int, 64, "key block size", 1, hi=MAX_POSITIONS),
                                    _p("blocks", int, 3, "past blocks chosen by gate score (top-b)", 0, hi=MAX_POSITIONS)),
                "MoBA-style block sparsity: per query, gate = q . mean(K of block); keep the top-b past "
                "blocks, the query's own block and the first (sink) block. Training-free use of a trained "
                "method: an approximation.", "Lu et al. 2025, MoBA: Mixture of Block Attention for "
                "Long-Context LLMs", "moba:block=64,blocks=3", masking.MoBA),
    VariantInfo("xattn", "masking", (_p("block", int, 64, "block size (query and key)", 1, hi=MAX_POSITIONS),
                                     _p("stride", int, 8, "antidiagonal stride (divides block)", 1, hi=MAX_POSITIONS),
                                     _p("tau", float, 0.9, "cumulative score share kept per query block", 0,
                                        True, 1)),
                "XAttention-style block sparsity: blocks scored by strided antidiagonal sums, kept in "
                "descending score until their share reaches tau; the diagonal and first blocks always kept.",
                "Xu et al. 2025, XAttention: Block Sparse Attention with Antidiagonal Scoring",
                "xattn:block=64,stride=8,tau=0.9", masking.XAttention),
    VariantInfo("elu", "linear", (), "Linear attention with phi(x) = elu(x) + 1.",
                "Katharopoulos et al. 2020, Transformers are RNNs", "elu", linear.EluLinear),
    VariantInfo("relu", "linear", (), "Linear attention with phi(x) = relu(x) (rows with a zero normaliser "
                "are flagged degenerate).", "Qin et al. 2022, cosFormer (ReLU kernel baseline)", "relu",
                linear.ReluLinear),
    VariantInfo("performer", "linear", (_p("m", int, 64, "random features", 1, hi=4096),
                                        _p("seed", int, 0, "random-feature seed", 0, hi=2**31 - 1)),
                "Performer FAVOR+: positive orthogonal random features estimating the softmax kernel.",
                "Choromanski et al. 2021, Rethinking Attention with Performers", "performer:m=64",
                linear.Performer),
    VariantInfo("efficient", "linear", (), "Efficient Attention: softmax over q's features times softmax "
                "over the keys' positions (per feature; over the prefix when causal).",
                "Shen et al. 2021, Efficient Attention: Attention with Linear Complexities", "efficient",
                linear.EfficientAttention),
    VariantInfo("hedgehog", "fitted", (_p("steps", int, 100, "Adam steps", 1, hi=2000),
                                       _p("lr", float, 0.02, "learning rate", 0, True, 10),
                                       _p("mse", float, 1.0, "weight of the relative output MSE", 0, hi=1e6),
                                       _p("tokens", int, 1024, "fit on the first tokens of the text", 2, hi=8192),
                                       _p("rows", int, 256, "query rows per step (0 = all)", 0, hi=8192),
                                       _p("budget", float, 45.0, "stop the fit of a layer after this many "
                                          "seconds (0 = no limit)", 0, hi=600)),
                "Hedgehog feature maps [softmax(Wx+b), softmax(-(Wx+b))] per head, fitted on this text's "
                "q/k by attention transfer (row cross-entropy + output MSE, LoLCATs stage 1).",
                "Zhang et al. 2024, The Hedgehog & the Porcupine; Zhang et al. 2025, LoLCATs",
                "hedgehog", hedgehog.Hedgehog),
    VariantInfo("temperature", "reweight", (_p("t", float, None, "softmax temperature", 0, True, 1e6),),
                "Softmax with temperature t: softmax(s / t) (t < 1 sharpens, t > 1 flattens).",
                "(standard re-weighting)", "temperature:0.5", reweight.Temperature),
    VariantInfo("act", "reweight", (_p("beta", float, 0.4, "weight kept on hidden sinks", 0, False, 1),
                                    _p("alpha", float, 5.0, "sink if column sum > alpha x mean column sum",
                                       0, True, 1e6)),
                "ACT-style calibration: non-initial tokens that soak up attention (hidden sinks, found per "
                "head on the softmax run) keep beta of their weight; the rest goes to the other keys "
                "proportionally. ACT's labelled head selection is not applied.",
                "Yu et al. 2024, Unveiling and Harnessing Hidden Attention Sinks (ACT)", "act:beta=0.4",
                reweight.ACT),
    VariantInfo("zerotuning", "reweight", (_p("gamma", float, 0.7, "scale on the first token's attention",
                                              0, True, 1e6),),
                "ZeroTuning-style first-token scaling: the first token's weight times gamma, renormalised "
                "(gamma < 1 sharpens the rest, > 1 flattens it).", "Han et al. 2025, ZeroTuning: Unlocking "
                "the Initial Token's Power", "zerotuning:0.7", reweight.ZeroTuning),
]}

ALIASES = {"full": "softmax", "sliding": "window", "sink": "streaming", "streamingllm": "streaming",
           "top-k": "topk", "top-theta": "toptheta", "topθ": "toptheta", "xattention": "xattn",
           "favor": "performer", "favor+": "performer", "elu+1": "elu", "temp": "temperature",
           "lolcats": "hedgehog"}


@dataclass(frozen=True)
class VariantSpec:
    """A parsed spec: registry name plus every parameter (defaults filled in), hashable."""

    name: str
    params: tuple               # ((name, value), ...) in the registry's order

    @property
    def info(self) -> VariantInfo:
        return VARIANTS[self.name]

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def text(self) -> str:
        """Canonical spec string (parse(text) gives this spec back)."""
        p = dict(self.params)
        if self.name == "streaming":
            return f"sinks:{p['sinks']}+window:{p['window']}"
        if not self.params:
            return self.name
        if len(self.params) == 1:
            return f"{self.name}:{_fmt(self.params[0][1])}"
        return f"{self.name}:" + ",".join(f"{k}={_fmt(v)}" for k, v in self.params)

    def build(self):
        return self.info.cls(self)

    def __str__(self) -> str:
        return self.text


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def list_variants() -> list[dict]:
    """The registry as plain dicts (name, family, params with defaults and types, description, paper)."""
    return [v.to_dict() for v in VARIANTS.values()]


def _value(variant: str, param: Param, raw: str):
    raw = raw.strip()
    if not raw:
        raise InputError(f"{variant}: empty value for {param.name}")
    try:
        v = int(raw) if param.type is int else float(raw)
    except ValueError:
        kind = "an integer" if param.type is int else "a number"
        raise InputError(f"{variant}: {param.name} must be {kind}, got {raw!r}") from None
    if param.type is float and v != v:
        raise InputError(f"{variant}: {param.name} must be a number, got {raw!r}")
    if param.type is float and not math.isfinite(v):
        raise InputError(f"{variant}: {param.name} must be finite, got {raw!r}")
    return param.check(variant, v)


def _parse_part(part: str) -> tuple[str, dict, list]:
    """'name:args' -> (registry name, {key: raw}, [positional raws])."""
    name, _, args = part.partition(":")
    name = name.strip().lower()
    if not name:
        raise InputError(f"bad variant spec {part!r}: missing the variant name")
    name = ALIASES.get(name, name)
    if name not in VARIANTS:
        raise InputError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    kw, pos = {}, []
    if ":" in part and not args.strip():
        raise InputError(f"bad variant spec {part!r}: nothing after ':'")
    for piece in (args.split(",") if args.strip() else []):
        if "=" in piece:
            k, _, v = piece.partition("=")
            k = k.strip().lower()
            if k in kw:
                raise InputError(f"{name}: {k} given twice")
            kw[k] = v
        else:
            pos.append(piece)
    return name, kw, pos


def parse_spec(spec: Union[str, VariantSpec]) -> VariantSpec:
    """Parse one spec string (see the module docstring) into a VariantSpec; InputError if invalid."""
    if isinstance(spec, VariantSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty variant spec")
    text = spec.strip().replace(" ", "")
    parts = text.split("+")
    if len(parts) > 1:
        parsed = [_parse_part(p) for p in parts]
        names = sorted(p[0] for p in parsed)
        if names != ["streaming", "window"] or len(parts) != 2:
            raise InputError(f"bad variant spec {spec!r}: '+' only combines sinks and window, "
                             "as in sinks:4+window:64")
        kw = {}
        for name, k, pos in parsed:
            key = "window" if name == "window" else "sinks"
            if k or len(pos) != 1:
                raise InputError(f"bad variant spec {spec!r}: write sinks:S+window:W with one number each")
            kw[key] = pos[0]
        return _build("streaming", kw, [], spec)
    name, kw, pos = _parse_part(text)
    return _build(name, kw, pos, spec)


# 'sinks' alone reads as the streaming variant's first parameter (sinks:4 = 4 sinks + default window)
ALIASES["sinks"] = "streaming"


def _build(name: str, kw: dict, pos: list, spec: str) -> VariantSpec:
    info = VARIANTS[name]
    names = [p.name for p in info.params]
    if pos:
        if not info.params:
            raise InputError(f"{name} takes no parameters, got {spec!r}")
        if len(pos) > 1:
            raise InputError(f"{name}: only the first parameter ({names[0]}) may be given without a name; "
                             f"write e.g. {info.example}")
        if names[0] in kw:
            raise InputError(f"{name}: {names[0]} given twice")
        kw = {names[0]: pos[0], **kw}
    for k in kw:
        if k not in names:
            allowed = ", ".join(names) if names else "none"
            raise InputError(f"{name}: unknown parameter {k!r} (parameters: {allowed})")
    values = []
    for p in info.params:
        if p.name in kw:
            values.append((p.name, _value(name, p, kw[p.name])))
        elif p.default is None:
            raise InputError(f"{name} needs {p.name} ({p.help}), e.g. {info.example}")
        else:
            values.append((p.name, p.type(p.default)))
    vs = VariantSpec(name, tuple(values))
    if name == "xattn" and dict(values)["block"] % dict(values)["stride"]:
        raise InputError(f"xattn: stride must divide block, got block={dict(values)['block']}, "
                         f"stride={dict(values)['stride']}")
    return vs


def split_specs(text: str) -> list[str]:
    """Split a list of specs on ',' / ';' / newlines, keeping 'key=value' pieces with their spec."""
    out: list[str] = []
    for chunk in text.replace(";", "\n").splitlines():
        for piece in chunk.split(","):
            piece = piece.strip()
            if not piece:
                continue
            if "=" in piece and ":" not in piece and "+" not in piece and out:
                out[-1] += "," + piece
            else:
                out.append(piece)
    return out


def parse_specs(specs) -> list[VariantSpec]:
    """A string list ('window:64,elu') or an iterable of strings/specs -> unique VariantSpecs in order."""
    items = split_specs(specs) if isinstance(specs, str) else [s for s in (specs or [])]
    if not items:
        raise InputError("no variants given (e.g. window:64,sinks:4+window:64,topk:32,elu)")
    out, seen = [], set()
    for s in items:
        if isinstance(s, str):
            pieces = split_specs(s)
            if len(pieces) != 1:
                out_s = parse_specs(pieces)
                for v in out_s:
                    if v not in seen:
                        seen.add(v)
                        out.append(v)
                continue
        v = parse_spec(s)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
