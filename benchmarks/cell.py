"""The unit of work of a grid: one (network, dataset, seed, metric set, protocol) cell.

``Protocol`` holds every option of the pruning protocol with the authors' defaults
(docs/protocol.md) and its accuracy target (``Protocol.target``); ``Cell`` names one cell and
hashes to its id; ``CellResult`` is what ``prunetax.benchmarks.protocol.run_cell`` returns: one
row per metric and the trajectories (their columns: ``prunetax.benchmarks.results``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from prunetax.taxonomy.errors import PrunetaxError

SCHEMA_VERSION = "1"

SCHEDULES = ("fast", "exact")
MODES = ("none", "characterise", "retrain")
REFERENCES = ("random", "oracle")


# Options added after cells were first hashed, with their defaults: ``Protocol.to_dict`` (and so
# ``Cell.id`` and the rows' ``protocol`` column) leaves them out while they hold these values.
_KEYED_WHEN_SET = {"sequential_test": True, "sequential_delta": 1e-9}


@dataclass(frozen=True)
class Protocol:
    """The pruning protocol. Defaults are the authors' except where docs/protocol.md says (it lists both)."""
    threshold: float = 5.0            # accuracy drop at which the rate is read
    relative: bool = False            # threshold in % of the baseline accuracy instead of points
    units_per_step: int = 1
    schedule: str = "fast"            # "exact": test accuracy after every step; "fast": coarse, then refine
    eval_every: int = 0               # fast schedule's coarse stride in steps; 0 = automatic
    saliency_batches: int = 2         # batches of eval images per step, reshuffled every step
    batch_size: int = 128
    one_shot: bool = False            # rank once on the baseline, never recompute (GFBS style)
    mode: str = "none"                # "characterise" / "retrain": SGD steps after each pruning step
    retrain_steps: int = 0            # SGD steps after each pruning step in retrain mode
    retrain_lr: float = 0.001
    test_images: int = 0              # 0 = the full test set; fewer for quick runs and tests
    max_trajectories: int = 0         # trajectories per batched pass (memory bound); 0 = automatic
    oracle_candidates: int = 0        # oracle candidates per step (lowest eval loss wins); 0 = 32
    prune_linear: bool = False        # also score and prune the channels of linear producers
    sequential_test: bool = True      # stop a mask's test pass once its side of the target is decided
    sequential_delta: float = 1e-9    # error bound per early decision; 0 = stop only when certain

    def __post_init__(self):
        if not (0 < self.threshold < 100):
            raise PrunetaxError(f"threshold {self.threshold} is out of range; give a drop in (0, 100)")
        if self.schedule not in SCHEDULES:
            raise PrunetaxError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.mode not in MODES:
            raise PrunetaxError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        for name in ("units_per_step", "saliency_batches", "batch_size"):
            if getattr(self, name) < 1:
                raise PrunetaxError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "retrain_steps", "test_images", "max_trajectories", "oracle_candidates"):
            if getattr(self, name) < 0:
                raise PrunetaxError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 <= self.sequential_delta < 1.0):
            raise PrunetaxError(f"sequential_delta must be in [0, 1), got {self.sequential_delta}")

    def target(self, baseline: float) -> float:
        """The accuracy (%) at which the rate is read: ``baseline`` minus the threshold, in points
        (absolute) or in % of ``baseline`` (``relative``)."""
        drop = self.threshold * (baseline / 100.0 if self.relative else 1.0)
        return baseline - drop

    def test_split(self, x, y):
        """The test images accuracy is measured on: the first ``test_images`` (0: all of them)."""
        return (x[: self.test_images], y[: self.test_images]) if self.test_images else (x, y)

    def to_dict(self) -> dict:
        """Every option, except those added after cells were first hashed while they hold their
        default (``_KEYED_WHEN_SET``): a cell's id and its rows' ``protocol`` stay as they were."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if not (k in _KEYED_WHEN_SET and v == _KEYED_WHEN_SET[k])}

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PrunetaxError(f"unknown protocol option {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    """One cell: the baseline (network, dataset, seed, training epochs/limit) and what runs on it."""
    network: str
    dataset: str
    seed: int
    metrics: tuple[str, ...]                  # canonical ids, named metrics, expressions, "random", "oracle"
    protocol: Protocol = field(default_factory=Protocol)
    epochs: int | None = None                 # None: the model's recipe
    train_limit: int | None = None            # train on the first N images only (quick runs, tests)

    def to_dict(self) -> dict:
        return {"network": self.network, "dataset": self.dataset, "seed": self.seed,
                "metrics": list(self.metrics), "protocol": self.protocol.to_dict(),
                "epochs": self.epochs, "train_limit": self.train_limit}

    @property
    def id(self) -> str:
        """Stable id: network, dataset, seed and a hash of everything else."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.network}_{self.dataset}_s{self.seed}_{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass(frozen=True)
class Measurement:
    """How a cell's passes run, never what they give: the results are the same either way (to
    the bit on a CPU; tests/test_protocol.py). Knobs for measuring the harness, not options of
    the protocol (those are ``Protocol``'s and enter the cell's id).

    ``share``: trajectories with equal keep masks share one saliency pass (per signal group) and
    one test pass (False: one of each per trajectory). ``evaluator``: how test passes run,
    ``"masked"`` (K masks per batched pass of the masked network; the default on a GPU),
    ``"slim"`` (each mask's physically slimmed network; the default on a CPU) or None (by device).
    """
    share: bool = True
    evaluator: str | None = None

    def __post_init__(self):
        if self.evaluator not in (None, "slim", "masked"):
            raise PrunetaxError(f"unknown evaluator {self.evaluator!r}; use 'slim', 'masked' or None (by device)")


@dataclass(frozen=True)
class RunOptions:
    """How one cell runs (``prunetax.benchmarks.protocol.run_cell``); none of it enters the results.

    ``progress``: True: the baseline's training bar, then a bar over the pruning steps; ``"lines"``
    (output to a file): one plain line on stderr at most once a minute; False: nothing.
    ``checkpoint``: the cell's state file (None: none), resumed when it holds this cell's state and
    written every ``checkpoint_every`` seconds (0: after every step) and on SIGTERM / SIGINT.
    ``allow_weak_baseline``: prune a baseline whose accuracy target is not above chance.
    ``measurement``: how the passes run (``Measurement``).
    """
    progress: bool | str = False
    checkpoint: str | None = None
    checkpoint_every: float = 300.0
    allow_weak_baseline: bool = False
    measurement: Measurement = field(default_factory=Measurement)

    def __post_init__(self):
        if self.progress not in (True, False, "lines"):
            raise PrunetaxError(f"progress must be True, False or 'lines', got {self.progress!r}")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if not self.checkpoint_every >= 0:
            raise PrunetaxError(f"checkpoint_every must be >= 0 seconds, got {self.checkpoint_every!r}")


@dataclass
class CellResult:
    cell: Cell
    rows: list[dict]            # one per metric: results.score_row (columns results.ROW_COLUMNS)
    trajectories: list[dict]    # one per step of each metric: results.trajectory_rows
    wall_seconds: float
