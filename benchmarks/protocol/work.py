"""Work accounting: the image-passes a cell's pruning ran, and what they would have been.

:class:`Work` counts, per kind of pass (``saliency``, ``oracle``, ``test``), the image-passes
run (``<kind>_images``) and those a run without sharing or early stops would have run
(``saliency_images_unshared``, ``oracle_images_unshared``, ``test_images_exhaustive``), plus
the same weighted by the MACs of the mask each image went through (``<kind>_macs``), and the
early test decisions a completed pass overturned (``test_decisions_reversed``). These counts
are the ``work`` columns of the scores (docs/results.md) and what the perf scripts compare.
"""
from __future__ import annotations

import torch

__all__ = ["KINDS", "Work", "add_work"]

KINDS = ("saliency", "oracle", "test")  # what the counters count


def _names(kind: str) -> tuple[str, str]:
    """The counters of ``kind``: (run, without sharing or early stops)."""
    return f"{kind}_images", "test_images_exhaustive" if kind == "test" else f"{kind}_images_unshared"


class Work:
    """The image-passes of one network's pruning (MAC-weighted sums stay on the device: counting
    costs no host transfer)."""

    def __init__(self, structure, device):
        self.st = structure
        self.cost = {f"{w}_images{x}": 0 for w in KINDS for x in ("", "_unshared")}
        self.cost["test_images_exhaustive"] = self.cost.pop("test_images_unshared")
        self.cost["test_decisions_reversed"] = 0           # early decisions a completed pass overturned
        self.device = device
        self._macs = torch.zeros(2 * len(KINDS), dtype=torch.float64, device=device)

    def count(self, kind: str, keep: torch.Tensor, images, unshared: torch.Tensor | None = None,
              unshared_images=None) -> None:
        """Count image-passes of ``kind``: ``images`` (an int, or one per row) through each row
        of ``keep``, and, without sharing or early stops, ``unshared_images`` (default
        ``images``) through each row of ``unshared`` (default ``keep``)."""
        w = KINDS.index(kind)
        unshared = keep if unshared is None else unshared
        unshared_images = images if unshared_images is None else unshared_images
        names = _names(kind)
        for slot, (rows, imgs) in enumerate(((keep, images), (unshared, unshared_images))):
            if len(rows) == 0:
                continue
            macs = self.st.counts(rows)[:, 2]
            if isinstance(imgs, int):
                self.cost[names[slot]] += imgs * len(rows)
                self._macs[2 * w + slot] += macs.sum() * imgs
            else:
                self.cost[names[slot]] += sum(imgs)
                self._macs[2 * w + slot] += (macs * torch.tensor(imgs, dtype=macs.dtype, device=macs.device)).sum()

    def reversed_decision(self) -> None:
        """Count an early test decision that the completed pass overturned."""
        self.cost["test_decisions_reversed"] += 1

    def report(self) -> dict:
        """The counters and the MAC-weighted image-passes (``<kind>_macs``: images x the MACs of
        the mask each went through; ``*_macs_unshared`` / ``test_macs_exhaustive``); one host transfer."""
        macs = self._macs.tolist()
        out = dict(self.cost)
        for w, kind in enumerate(KINDS):
            out[f"{kind}_macs"] = macs[2 * w]
            out[f"{kind}_macs_exhaustive" if kind == "test" else f"{kind}_macs_unshared"] = macs[2 * w + 1]
        return out

    def state_dict(self) -> dict:
        return {"cost": dict(self.cost), "macs": self._macs.clone()}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from ``state`` (:meth:`state_dict`; None: nothing saved, as in older states)."""
        if state is not None:
            self.cost.update({k: int(v) for k, v in state["cost"].items()})
            self._macs = state["macs"].to(self.device, torch.float64, copy=True)


def add_work(a: dict, b: dict) -> dict:
    """Two work reports (:meth:`Work.report`) added key by key."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys(list(a) + list(b))}
