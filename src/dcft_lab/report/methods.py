"""How a method is shown: its display label and its colour / marker / line style, the same in every table and
figure of the lab, whatever else a report shows.

Records keep their `method_label` as written at run time (e.g. "DCFT d=8 s=8 k=1"): it is the key that `--compare`,
`--labels`, `--order`, table.csv and the paper numbers use. Only what a reader sees is renamed: DCFT's `s` is
its stride, spelled out ("DCFT d=8 stride=8 k=1"), since a table beside it has a `scale` column.

A method's style depends on its label alone, never on which other rows a figure has: the lab's methods have a fixed
entry in METHOD_STYLES; any other label gets a colour and marker from its label's CRC-32 (stable across runs and
machines), from a palette that none of the fixed entries uses.
"""

from __future__ import annotations

import re
import zlib

# A DCFT label's stride token: "s=" right after "d=<k>" (labels written by adapters.methods.DCFTMethod.label).
_DCFT_STRIDE = re.compile(r"\b(DCFT d=\d+) s=(\d+)")
_DCFT_STRIDE_SHOWN = re.compile(r"\b(DCFT d=\d+) stride=(\d+)")

# label (as recorded) -> (colour, marker, line style). Okabe-Ito colours first (colour-blind safe); every DCFT
# variant has its own hue, LoRA-like methods are blues, head-only is a grey dashed reference.
METHOD_STYLES = {
    "Head only": ("#7f7f7f", "X", "--"),
    "LoRA r=1": ("#0072B2", "s", "-"),
    "LoRA r=2": ("#1f3f73", "s", "-"),
    "LoRA r=8": ("#4f8fc0", "s", "-"),
    "AdaLoRA r=2->1": ("#56B4E9", "h", "-"),
    "AdaLoRA 0.32M": ("#56B4E9", "h", "-"),
    "DCFT d=8 s=8 k=1": ("#D55E00", "o", "-"),
    "DCFT d=8 s=8 k=1 init=zero": ("#E69F00", "^", "-"),
    "DCFT d=8 s=8 k=1 init=lora": ("#CC79A7", "v", "-"),
    "DCFT d=8 s=8 k=1 init=orthonormal": ("#999933", "P", "-"),
    "DCFT d=2 s=2 k=1": ("#009E73", "D", "-"),
    "LoKr r=1 f=8": ("#6A3D9A", "*", "-"),
    "Full FT": ("#000000", "p", "-"),
    # the paper's other Table 1 baselines (issue 31): colours none of the rows above and no fallback uses
    "BitFit": ("#8C564B", "d", "-"),
    "HAdapter b=8": ("#2CA02C", "<", "-"),
    "PAdapter b=16": ("#98DF8A", ">", "-"),
    "LoRA-FA r=1": ("#9EC9E2", "s", ":"),
    "SoRA r=8": ("#084594", "H", "-"),
}
# For labels without an entry: colours none of METHOD_STYLES uses, and markers; picked by the label's CRC-32.
FALLBACK_COLOURS = ("#17BECF", "#BCBD22", "#E7298A", "#1B9E77", "#A6761D", "#7570B3", "#B15928", "#66A61E",
                    "#FB9A99", "#003C30")
FALLBACK_MARKERS = "osD^vP*Xh<>pd"


def display_label(label: str) -> str:
    """The label a reader sees: DCFT's stride spelled out ("DCFT d=8 s=8 k=1" -> "DCFT d=8 stride=8 k=1");
    every other label unchanged."""
    return display_text(label)


def record_label(label: str) -> str:
    """The inverse of display_label: the label as runs record it."""
    return _DCFT_STRIDE_SHOWN.sub(r"\1 s=\2", label)


def method_style(label: str) -> dict:
    """{"color", "marker", "linestyle"} of a method, from its label only (recorded or displayed form alike)."""
    label = record_label(label)
    if label in METHOD_STYLES:
        color, marker, linestyle = METHOD_STYLES[label]
    else:
        h = zlib.crc32(label.encode("utf-8"))
        color = FALLBACK_COLOURS[h % len(FALLBACK_COLOURS)]
        marker = FALLBACK_MARKERS[(h // len(FALLBACK_COLOURS)) % len(FALLBACK_MARKERS)]
        linestyle = "-"
    return {"color": color, "marker": marker, "linestyle": linestyle}


def display_text(text: str) -> str:
    """``text`` (e.g. a --note) with every DCFT label in it written as display_label writes it."""
    return _DCFT_STRIDE.sub(r"\1 stride=\2", text)
