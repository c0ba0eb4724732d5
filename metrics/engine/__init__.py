"""The metric engine: one verb, ``evaluate_metrics``, and the state it owns, ``MetricEvaluator``.

Evaluates many metrics for K keep masks from one pass over the images: pointwise -> reduction
-> aggregation (streamed over chunks of images) -> Domino structure -> scaling -> unit saliency.
docs/metrics.md defines every quantity; ``prunetax.metrics.kernels`` holds every component's
registered function. This module's one job is driving an evaluation (masks, images, passes);
the work is split by stage:

- ``plan``: which specs, signals and sites the metrics need (each base input's registered
  ``signals``), and which sites share the fast path;
- ``sites``: the keep masks and what the base inputs' registered kernels read to form the
  elements ``(x, g, h)`` of every producer channel and consumer slice, and their counts;
- ``stream``: ``Accumulator``, the running statistics over chunks of images;
- ``finalize``: Domino sums, scaling, expressions and unit saliencies (``MetricValues``).

Everything is vectorised over K trajectories (each with its own keep mask) and over channels;
metrics that share a site share its pointwise tensor, and all metrics share one forward/backward
pass per chunk of images.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from prunetax.metrics.engine.finalize import MetricValues, finalize, unit_saliency
from prunetax.metrics.engine.plan import as_metrics, leaf_specs, needs_images, plan
from prunetax.metrics.engine.sites import Sites
from prunetax.metrics.engine.stream import Accumulator
from prunetax.metrics.signals import Signals, collect
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["evaluate_metrics", "MetricEvaluator", "MetricValues", "unit_saliency", "as_metrics", "check_metrics"]

_BYTES_PER_WEIGHT_GRAD = 4 * 6     # per weight of the largest layer, per image and trajectory, in one pass


def check_metrics(structure, metrics) -> None:
    """Raise PrunetaxError (one line, naming the metric) unless every metric of ``metrics`` (ids,
    names, expressions or parsed metrics) can be computed on ``structure``: every component has a
    kernel, and the network has what the metric reads (BatchNorm parameters need a BatchNorm
    after every producer). Sees no images: a grid runs it before any baseline trains."""
    given = [metrics] if isinstance(metrics, str) else list(metrics)
    for text, m in zip(given, as_metrics(given)):
        try:
            plan(structure, leaf_specs([m]))
        except PrunetaxError as exc:
            name = text if isinstance(text, str) else str(m)
            raise PrunetaxError(f"metric {name} cannot be computed on this network: {exc}") from None


class MetricEvaluator:
    """Many metrics on K keep masks, accumulated over images (torchmetrics-like: ``update`` with
    each batch, then ``compute``).

    ``masked``: a ``MaskedModel`` of the network, which evaluators may share: each ``update``
    that runs an image pass first sets its keep mask to this evaluator's ``keep`` (and leaves it
    so); making an evaluator changes nothing on it;
    ``structure``: the units to score (e.g. ``structure.restricted(("conv",))``); ``metrics``:
    ids, MetricSpec or MetricExpr objects; ``keep``: bool [U] or [K, U] (None: every unit kept,
    K = 1). ``weight_grad_bytes``: when per-image weight gradients are read, split each batch
    into passes of at most this many bytes of them (None: each batch in one pass).
    ``chunk_bytes``: bytes per temporary tensor when statistics are formed a chunk of images at
    a time (None: by device). The model must be in eval mode (docs/metrics.md).

    ``images``: images per trajectory read through image passes so far (0 while none ran, and
    always 0 for metrics that read weight values alone); ``compute`` reports it in
    ``MetricValues.images``.
    """

    def __init__(self, masked, structure, metrics, keep=None, *, weight_grad_bytes: int | None = None,
                 chunk_bytes: int | None = None):
        self.masked, self.structure = masked, structure
        self.metrics = as_metrics(metrics)
        self.specs = leaf_specs(self.metrics)
        self.needs = plan(structure, self.specs)
        gm = masked.graph_module
        param = next(gm.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None else torch.get_default_dtype()
        U = structure.num_units
        keep = (torch.ones(1, U, dtype=torch.bool, device=self.device) if keep is None
                else torch.as_tensor(keep, dtype=torch.bool))
        if keep.dim() == 1:
            keep = keep[None]
        if keep.dim() != 2 or keep.shape[1] != U:
            raise PrunetaxError(f"keep must have shape [K, {U}] or [{U}], got {tuple(keep.shape)}")
        self.keep = keep.to(device=self.device)
        self.K = self.keep.shape[0]
        self.sites = Sites(gm, structure, self.keep)
        self.acc = Accumulator(self.sites, self.specs, chunk_bytes)
        self.weight_grad_bytes = weight_grad_bytes
        # weights of the largest layer: what one image's per-image weight gradients are sized by
        self._largest = max(L.out_channels * L.in_channels * L.kernel // L.groups for L in structure.layers.values())
        self.images = 0

    @property
    def needs_images(self) -> bool:
        """False when the metrics read weight values alone: ``update()`` needs no images then."""
        return needs_images(self.needs)

    def images_per_pass(self, n: int, rows: int | None = None) -> int:
        """Images (per trajectory) of one forward/backward pass out of a batch of ``n`` when ``rows``
        trajectories share the pass (None: this evaluator's K)."""
        if not (self.needs.weight and self.weight_grad_bytes):
            return n
        K = self.K if rows is None else rows
        return max(1, min(n, self.weight_grad_bytes // (K * self._largest * _BYTES_PER_WEIGHT_GRAD)))

    def update(self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        """Add a batch: ``images`` [N, ...] and ``labels`` [N], the same for every trajectory (each
        trajectory sees them under its own keep mask, set on the shared model here). Without
        images (only when ``needs_images`` is False) the weights' statistics are added once, as
        for one image."""
        if images is None:
            if self.needs_images:
                raise PrunetaxError("these metrics read signals of an image pass: give images and labels")
            self.acc.add(Signals(), 1)
            return
        images, labels = images.to(self.device), labels.to(self.device)
        if images.dtype.is_floating_point:
            images = images.to(self.dtype)
        N = len(labels)
        if not self.needs_images:                  # weight values alone: no pass over the images
            self.acc.add(Signals(), N)
            return
        self.masked.set_keep(self.keep)            # this evaluator's masks, whoever used the model last
        step = self.images_per_pass(N)
        for i in range(0, N, step):
            xb, yb = (images, labels) if step >= N else (images[i:i + step], labels[i:i + step])
            B = len(yb)
            if self.K > 1:                         # every trajectory sees the same images
                xb, yb = xb.repeat(self.K, *([1] * (xb.dim() - 1))), yb.repeat(self.K)
            self.acc.add(collect(self.masked, xb, yb, self.needs), B)
            self.images += B

    def compute(self) -> MetricValues:
        """Every metric's channel saliencies from the images added so far."""
        if self.acc.n == 0:
            raise PrunetaxError("no saliency images: the batches were empty")
        return finalize(self.acc, self.sites, self.metrics, self.specs, images=self.images)


def evaluate_metrics(masked, structure, metrics, batches: Iterable | Callable[[], Iterable], keep=None, *,
                     weight_grad_bytes: int | None = None, chunk_bytes: int | None = None) -> MetricValues:
    """Evaluate ``metrics`` on ``masked`` (a MaskedModel) for the keep masks ``keep`` ([U] or [K, U],
    None: all kept) over ``batches``, and return their values (``MetricValues``: per-metric,
    per-producer S(l, c) float64 [K, C], unit saliencies per row, nonfinite counts, and
    ``images``, the images per trajectory read through image passes).

    ``batches``: an iterable of ``(images, labels)``, or a callable returning one; a callable is
    called only when the metrics read an image pass (weight values alone do not: their
    statistics are then formed once from the weights, and ``images`` is 0). Every trajectory
    sees every image, under its own keep mask (set on ``masked`` before the image pass; an
    evaluation without one leaves ``masked`` as it was). ``weight_grad_bytes`` bounds the
    per-image weight gradients of one pass (the batch is split into passes); ``chunk_bytes``
    sizes the temporaries (see ``MetricEvaluator``).
    """
    ev = MetricEvaluator(masked, structure, metrics, keep, weight_grad_bytes=weight_grad_bytes,
                         chunk_bytes=chunk_bytes)
    if callable(batches) and not ev.needs_images:
        ev.update()
    else:
        for images, labels in (batches() if callable(batches) else batches):
            ev.update(images, labels)
    return ev.compute()
