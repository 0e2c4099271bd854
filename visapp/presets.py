"""Example texts for the input panel; each shows one phenomenon (see attention-phenomena.md)."""
from __future__ import annotations

import random

PROSE = ("Attention lets every token look back at the tokens before it. In a trained language model, many "
         "heads put most of their weight on the very first token, a pattern called an attention sink. Other "
         "heads look at the previous token, or copy the token that followed an earlier occurrence of the "
         "current one.")

MULTI_DOC = """Document [1] The Amazon river carries more water than any other river on Earth and drains a basin of about seven million square kilometres.

Document [2] Mount Everest, on the border of Nepal and China, rises 8,849 metres above sea level and was first climbed in 1953.

Document [3] The Sahara is the largest hot desert in the world; its sand dunes can reach heights of 180 metres.

Document [4] Lake Baikal in Siberia is the deepest lake on Earth, at 1,642 metres, and holds about a fifth of the world's fresh surface water.

Document [5] The Mariana Trench in the western Pacific reaches a depth of nearly 11,000 metres at the Challenger Deep.

Question: Which document says how deep the deepest lake is, and what is its depth?
Answer:"""


def _induction_text(n_words: int = 24, seed: int = 7) -> str:
    """A random-looking word sequence repeated once: induction heads attend, in the second copy, to
    the token after the earlier occurrence of the current token."""
    words = ("amber orbit velvet quartz ladder piano cobalt meadow lantern falcon prism tundra willow "
             "saddle copper harbor maple cipher nimbus garnet ember vessel radish tango fossil").split()
    rng = random.Random(seed)
    seq = " ".join(rng.choice(words) for _ in range(n_words))
    return f"{seq} {seq}"


INDUCTION = _induction_text()

CODE = '''def moving_average(values, window):
    """Mean of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    out = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out
'''

# "probes": the synthetic probes a preset is made for; choosing the preset ticks them (Options -> Probes).
PRESETS = {
    "prose": {"label": "Prose", "text": PROSE, "items": "auto", "probes": ()},
    "basin": {"label": "Documents + question (basin)", "text": MULTI_DOC, "items": "auto", "probes": ("retrieval",)},
    "induction": {"label": "Repeated sequence (induction)", "text": INDUCTION, "items": "auto",
                  "probes": ("induction",)},
    "code": {"label": "Code", "text": CODE, "items": "auto", "probes": ()},
}
DEFAULT_PRESET = "prose"
