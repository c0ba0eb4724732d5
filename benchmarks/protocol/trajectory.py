"""A trajectory (one metric pruning one copy of the network) and what is read off it.

:class:`Trajectory` holds a metric's progress: the units removed, each step's rates, the test
outcomes of the steps tested (whole-test-set accuracies, or early decisions of the sequential
test). :func:`resolve_metrics` parses a cell's metric list into trajectories (metrics equivalent
on the network run once: ``ran_as``); :func:`crossing` interpolates the rates where accuracy
crosses the target.
"""
from __future__ import annotations

import torch

from prunetax.benchmarks.cell import REFERENCES
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import parse_metric
from prunetax.taxonomy.spec import MetricSpec

__all__ = ["Trajectory", "resolve_metrics", "crossing", "is_above", "record"]


class Trajectory:
    """One metric pruning one copy of the network (its keep mask lives in the cell's tensor)."""

    def __init__(self, name: str, metric, ran_as: str):
        self.name, self.metric, self.ran_as = name, metric, ran_as
        self.run_metric = ran_as if ran_as in REFERENCES else parse_metric(ran_as)
        self.removed: list[int] = []              # units removed, in order
        self.step_end: list[int] = [0]            # len(removed) after each step
        self.rates: list[tuple] = [(0.0, 0.0, 0.0)]  # (conv %, channels %, MACs %) after step i
        self.accuracy: dict[int, float] = {}      # step -> test accuracy on the whole test set
        self.tested: dict[int, tuple] = {}        # step -> (correct, images) its test pass read
        self.early: dict[int, bool] = {}          # step decided on part of the test set -> above the target?
        self.done = False
        self.crossed = False
        self.order: torch.Tensor | None = None    # one-shot: each unit's rank on the baseline

    def state_dict(self) -> dict:
        """Its progress (copies of the lists, which the run goes on extending; ``order`` is
        never changed in place, so it is shared)."""
        return {"ran_as": self.ran_as, "removed": list(self.removed), "step_end": list(self.step_end),
                "rates": list(self.rates), "accuracy": dict(self.accuracy), "done": self.done,
                "crossed": self.crossed, "order": self.order, "tested": dict(self.tested),
                "early": dict(self.early)}

    def load_state_dict(self, state: dict, device="cpu") -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same metric); ``order`` goes to ``device``."""
        if state["ran_as"] != self.ran_as:
            raise PrunetaxError(f"the saved trajectory is of {state['ran_as']!r}, not {self.ran_as!r}")
        self.removed, self.step_end = [int(u) for u in state["removed"]], [int(e) for e in state["step_end"]]
        self.rates = [tuple(r) for r in state["rates"]]
        self.accuracy = dict(state["accuracy"])
        self.tested = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("tested", {}).items()}
        self.early = {int(k): bool(v) for k, v in state.get("early", {}).items()}   # absent in older states
        self.done, self.crossed = bool(state["done"]), bool(state["crossed"])
        self.order = None if state["order"] is None else state["order"].to(device, copy=True)

    def follow(self, src: "Trajectory") -> None:
        """Take the progress of ``src``, the trajectory of an equivalent metric that ran instead."""
        self.removed, self.step_end, self.rates = src.removed, src.step_end, src.rates
        self.accuracy, self.crossed, self.done = src.accuracy, src.crossed, True
        self.tested, self.early = src.tested, src.early

    def masks(self, steps: list[int], units: int, device) -> torch.Tensor:
        """Its keep masks after each of ``steps``, bool [len(steps), units]."""
        out = torch.ones(len(steps), units, dtype=torch.bool, device=device)
        for row, s in enumerate(steps):
            out[row, self.removed[: self.step_end[s]]] = False
        return out


def resolve_metrics(texts, structure) -> list[Trajectory]:
    """Parse the cell's metric list; metrics equivalent on this network run once (``ran_as``)."""
    single_member = all(len(u.members) == 1 for u in structure.units)
    trajectories, seen = [], set()
    for text in texts:
        text = text.strip()
        if text in REFERENCES:
            metric, name = text, text
        else:
            metric = parse_metric(text)
            name = text if ("-" not in text and "*" not in text and "+" not in text) else str(metric)
        if name in seen:
            continue
        seen.add(name)
        ran = metric
        if isinstance(metric, MetricSpec) and metric.structure == "domino_o" and single_member:
            ran = metric.replace(structure="channel")   # no merges and no groups: domino_o == channel
        trajectories.append(Trajectory(name, metric, ran if isinstance(ran, str) else str(ran)))
    if not trajectories:
        raise PrunetaxError("the cell has no metrics")
    return trajectories


def crossing(traj: Trajectory, target: float):
    """Interpolated (conv %, channels %, MACs %) where accuracy crosses ``target``, and the step;
    ``(None, None)`` when it never fell below.

    Steps decided early (``traj.early``) count on their side; the first step below and the
    step before it must have whole-test-set accuracies (the loop completes them)."""
    prev = None
    for s in sorted(set(traj.accuracy) | set(traj.early)):
        if not is_above(traj, s, target):
            if s not in traj.accuracy or (prev is not None and prev not in traj.accuracy):
                raise PrunetaxError(f"step {s} or the one before was tested on part of the test set only")
            a = traj.accuracy[s]
            if prev is None:
                return traj.rates[s], s
            a0, r0, r1 = traj.accuracy[prev], traj.rates[prev], traj.rates[s]
            t = (a0 - target) / (a0 - a) if a0 != a else 1.0
            return tuple(x0 + t * (x1 - x0) for x0, x1 in zip(r0, r1)), s
        prev = s
    return None, None


def is_above(t: Trajectory, s: int, target: float) -> bool:
    """Whether step ``s`` (tested) is at or above the target: its accuracy, or its early decision."""
    return t.accuracy[s] >= target if s in t.accuracy else t.early[s]


def record(t: Trajectory, s: int, got: tuple) -> None:
    """Keep the outcome ``(correct, images, above, accuracy)`` of step ``s``'s test pass."""
    correct, images, above, accuracy = got
    t.tested[s] = (int(correct), int(images))
    if accuracy is None:
        t.early[s] = bool(above)
    else:
        t.accuracy[s] = accuracy
        t.early.pop(s, None)
