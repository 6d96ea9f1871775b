"""The trainer's losses, one table: what each is called, which grouped levels of the backbone it
reads, whether the top-down gate is on, its β in the released code's form, and its row label in
the paper's tables. The parser (``--loss``), the model widths, the objective, ``visualize`` and
``experiments`` all read it.

A loss reads the grouped levels it names: ``high`` is ``S * cnum_high`` channels, ``middle``
``S * cnum_high * xi`` channels (``docs/method.md``); the other levels keep the backbone's
standard widths. A ``baseline`` is one of :mod:`tdsa_fast.losses`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LossSpec", "LOSSES", "LOSS_NAMES", "RELEASED_BETA", "loss_spec"]


@dataclass(frozen=True)
class LossSpec:
    name: str
    label: str  # its row in the paper's Tables II-IV
    levels: tuple[str, ...] = ()  # the grouped levels it reads: (), ("high",) or ("middle", "high")
    gate: bool = False  # the top-down gate (eq. 7) on the middle level
    released_beta: float | None = None  # β of the released code's form (docs/method.md)
    baseline: bool = False  # a loss of tdsa_fast.losses

    @property
    def grouped(self) -> bool:
        """True for the MC/TDSA losses (a channel-grouped term is added to the CE)."""
        return bool(self.levels)

    @property
    def has_middle(self) -> bool:
        return "middle" in self.levels

    def widths(self, xi: int, cnum_high: int) -> tuple[int | None, int | None]:
        """(middle_cnum, high_cnum) of the backbone: grouped where the loss reads a level,
        None (the standard width) elsewhere."""
        return (cnum_high * xi if self.has_middle else None, cnum_high if "high" in self.levels else None)


_BASELINE_LABELS = {"center": "Center", "asoftmax": "A-softmax", "focal": "Focal", "coco": "COCO", "lgm": "LGM",
                    "lmcl": "LMCL", "arcface": "ArcFace", "circle": "Circle"}

LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec("ce", "CE"),
    **{name: LossSpec(name, label, baseline=True) for name, label in _BASELINE_LABELS.items()},
    # beta: the MC-Loss script's 20, the TDSA script's 15 (its "w/o attention" ablation is the
    # same script without the gate)
    "mc": LossSpec("mc", "MC-Loss", ("high",), released_beta=20.0),
    "tdsa": LossSpec("tdsa", "TDSA", ("middle", "high"), gate=True, released_beta=15.0),
    "tdsa-noattn": LossSpec("tdsa-noattn", "TDSA w/o attention", ("middle", "high"), released_beta=15.0),
}
LOSS_NAMES = tuple(LOSSES)
RELEASED_BETA = {name: spec.released_beta for name, spec in LOSSES.items() if spec.released_beta is not None}


def loss_spec(name: str) -> LossSpec:
    """The entry of ``name``; ValueError listing the valid names for another."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}; got {name!r}")
    return LOSSES[name]
