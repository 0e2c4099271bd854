"""Every component id in one place (strings; views are keyed by visapp.urlstate.VIEWS). The shell's
ids (stores, input panel, navigation) exist on every page; a page's ids only while it is shown."""
from __future__ import annotations

# routing and state
URL = "url"
STATE = "view-state"                 # dcc.Store: parsed URL state (small JSON)
DONE = "analysis-done"               # dcc.Store: {"key", "model", "t"} written by the analysis job
AUTORUN = "autorun"                  # dcc.Store: a request the page asks the job to run at load
LOAD_REQ = "load-request"            # dcc.Store: a request whose model is loaded before AUTORUN
FILLED = "filled-key"                # dcc.Store: analysis key whose inputs are shown in the panel
ZOOM = "zoom-store"                  # dcc.Store: cache key of the zoomed block (long texts)
ZOOM_REQ = "zoom-request"            # dcc.Store: the region a click on a pooled map asks for
COMPARE = "compare-store"            # dcc.Store: cache key of the variant comparison
# Background jobs write here and a plain callback relays to ZOOM / COMPARE: Dash 4.4's renderer stops
# firing callbacks when a MATCH callback (the export controls) has a State on a background output.
ZOOM_JOB = "zoom-job-store"
COMPARE_JOB = "compare-job-store"
RUN_INFO = "run-info"
PAGE = "page-content"                # the shown page (visapp.pages.<view>.layout)
SELECT = "select-store"              # dcc.Store: a page's selection (head, metric, scale) for sync_state
GEN_REQ = "generate-request"         # dcc.Store: the generate page asks the analysis job to generate
NOTICE = "notice-box"                # one-line notices (cancelled, link not stored)

# input panel
MODEL = "model-select"
MODEL_PATH = "model-path"
TEXT = "text-input"
PRESET_PREFIX = "preset-"            # + preset name
BACKEND = "opt-backend"
MAX_TOKENS = "opt-max-tokens"
SINK_TOKENS = "opt-sink-tokens"
ITEMS = "opt-items"
PROBES = "opt-probes"
IMPORTANCE = "opt-importance"
ANALYZE = "analyze-btn"
CANCEL = "cancel-btn"
PROGRESS = "progress-bar"
PROGRESS_MSG = "progress-msg"
PROGRESS_WRAP = "progress-wrap"
ERROR = "error-box"

# navigation
NAV_PREFIX = "nav-"                  # + view
VIEW_PREFIX = "view-"                # + view

# overview
OV_METRIC = "ov-metric"
OV_SIZE = "ov-size"
OV_COLORS = "ov-colors"
OV_GRAPH = "ov-graph"
OV_SIDE = "ov-side"

# head detail
HD_LAYER = "hd-layer"
HD_HEAD = "hd-head"
HD_SCALE = "hd-scale"
HD_POOL = "hd-pool"
HD_MAP = "hd-map"
HD_ZOOM = "hd-zoom"
HD_NOTE = "hd-note"
HD_ENTROPY = "hd-entropy"
HD_RECEIVED = "hd-received"
HD_GRAPH = "hd-token-graph"
HD_DEPS = "hd-deps"
HD_THRESHOLD = "hd-threshold"
HD_SUMMARY = "hd-summary"

# sinks / basin / entropy / graphs
SK_EPS = "sk-eps"
SK_LAYERS = "sk-layers"
SK_RATE = "sk-rate"
SK_MAP = "sk-map"
SK_TABLE = "sk-table"
BS_TEXT = "bs-text"
BS_CURVES = "bs-curves"
BS_IMPORTANT = "bs-important"
BS_ORDER = "bs-order"
BS_SUMMARY = "bs-summary"
EN_MAP = "en-map"
EN_PROFILE = "en-profile"
EN_FLAGS = "en-flags"
GR_HEADS = "gr-heads"
GR_TOKENS = "gr-tokens"
GR_INFO = "gr-info"
GR_THRESHOLD = "gr-threshold"

# variants
VR_SPECS = "vr-specs"
VR_CUSTOM = "vr-custom"
VR_LAYERS = "vr-layers"
VR_RUN = "vr-run"
VR_CANCEL = "vr-cancel"
VR_PROGRESS = "vr-progress"
VR_PROGRESS_MSG = "vr-progress-msg"
VR_PROGRESS_WRAP = "vr-progress-wrap"
VR_ERROR = "vr-error"
VR_MAPS = "vr-maps"
VR_DIFF = "vr-diff"
VR_TABLE = "vr-table"
VR_BARS = "vr-bars"
VR_NOTE = "vr-note"
VR_DIFF_PICK = "vr-diff-pick"        # which variant the difference map shows

# generation
GN_TOKENS = "gn-tokens"
GN_RUN = "gn-run"
GN_TEXT = "gn-text"
GN_MAP = "gn-map"
GN_TABLE = "gn-table"
GN_USE = "gn-use"                    # button: use prompt + continuation as the text

# model view / trace a token (visapp.pages.model, visapp.pages.trace)
MV_GRAPH = "mv-graph"
MV_NOTE = "mv-note"
TRACE = "trace-store"                # dcc.Store in the trace page: {"a", "position", "tk"} of the trace shown
TRACE_JOB = "trace-job-store"        # shell store: the trace job's output, relayed to TRACE (see ZOOM_JOB)
TR_REQ = "tr-request"                # dcc.Store: the trace the page asks the job for
TR_POSITION = "tr-position"
TR_TOKEN_PREFIX = "tr-tok"           # pattern id {"type": TR_TOKEN_PREFIX, "index": i}: token strip buttons
TR_TOKENS = "tr-tokens"
TR_KEY = "tr-key"
TR_RUN = "tr-run"
TR_CANCEL = "tr-cancel"
TR_PROGRESS = "tr-progress"
TR_PROGRESS_MSG = "tr-progress-msg"
TR_PROGRESS_WRAP = "tr-progress-wrap"
TR_ERROR = "tr-error"
TR_JOB_ERROR = "tr-job-error"
TR_SUMMARY = "tr-summary"
TR_ROLLOUT = "tr-rollout"
TR_GRAPH = "tr-graph"
TR_LENS = "tr-lens"
TR_CONTRIB = "tr-contrib"
TR_NEURON = "tr-neuron"
# corpus, embedding + context search, side by side (visapp.pages.corpus / embedding / sidebyside)
CP_SOURCE = "cp-source"              # shipped corpus or upload
CP_UPLOAD = "cp-upload"
CP_UPLOAD_INFO = "cp-upload-info"
CP_CORPUS = "cp-corpus"              # dcc.Store: the chosen corpus (key of its stored items)
CP_RUN = "cp-run"
CP_CANCEL = "cp-cancel"
CP_PROGRESS = "cp-progress"
CP_PROGRESS_MSG = "cp-progress-msg"
CP_PROGRESS_WRAP = "cp-progress-wrap"
CP_ERROR = "cp-error"
CP_RESULT = "cp-result"              # dcc.Store (shell): {"run": key of the finished corpus run}
CP_JOB = "cp-job"                    # background output, relayed to CP_RESULT (see ZOOM_JOB)
CP_METRIC = "cp-metric"
CP_SUMMARY = "cp-summary"
CP_GRID = "cp-grid"
CP_SPREAD = "cp-spread"
CP_STABILITY = "cp-stability"
CP_DIST = "cp-dist"
CP_OPEN = "cp-open"                  # the text a click opened
EM_SOURCE = "em-source"              # current text or the corpus run
EM_LAYER = "em-layer"
EM_HEAD = "em-head"
EM_METHOD = "em-method"
EM_COLOR = "em-color"
EM_POINTS = "em-points"
EM_RUN = "em-run"
EM_CANCEL = "em-cancel"
EM_PROGRESS = "em-progress"
EM_PROGRESS_MSG = "em-progress-msg"
EM_PROGRESS_WRAP = "em-progress-wrap"
EM_ERROR = "em-error"
EM_STORE = "em-store"                # dcc.Store (shell): {"ek": embedding cache key}
EM_JOB = "em-job"
EM_SCATTER = "em-scatter"
EM_NOTE = "em-note"
EM_OPEN = "em-open"
CS_TOKEN = "cs-token"                # context search: the query token (of the current text)
CS_BY = "cs-by"
CS_K = "cs-k"
CS_RUN = "cs-run"
CS_CANCEL = "cs-cancel"
CS_ERROR = "cs-error"
CS_STORE = "cs-store"                # dcc.Store (shell): {"sk": search result key}
CS_JOB = "cs-job"
CS_TABLE = "cs-table"
CS_PROGRESS = "cs-progress"
CS_PROGRESS_MSG = "cs-progress-msg"
CS_PROGRESS_WRAP = "cs-progress-wrap"
SB_MODE = "sb-mode"                  # two models, one text | one model, two texts
SB_MODEL_B = "sb-model-b"
SB_PATH_B = "sb-path-b"
SB_TEXT_B = "sb-text-b"
SB_RUN = "sb-run"
SB_CANCEL = "sb-cancel"
SB_PROGRESS = "sb-progress"
SB_PROGRESS_MSG = "sb-progress-msg"
SB_PROGRESS_WRAP = "sb-progress-wrap"
SB_ERROR = "sb-error"
SB_STORE = "sb-store"                # dcc.Store (shell): {"dk": side-by-side key}
SB_JOB = "sb-job"
SB_METRIC = "sb-metric"
SB_SUMMARY = "sb-summary"
SB_DELTA = "sb-delta"
SB_MATCH = "sb-match"
SB_TABLE = "sb-table"
SB_MAP_A = "sb-map-a"
SB_MAP_B = "sb-map-b"
SB_HEAD = "sb-head"                  # the head shown in both (L.H)


def nav(view: str) -> str:
    return NAV_PREFIX + view


def view(view: str) -> str:
    return VIEW_PREFIX + view


def preset(name: str) -> str:
    return PRESET_PREFIX + name
