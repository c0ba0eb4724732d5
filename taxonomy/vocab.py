"""The component vocabularies of a saliency metric (docs/taxonomy.md), one registry per axis.

Every entry has an id, a one-line description, a plain-text formula, a LaTeX formula and, where
the authors' code names it, the authors' name. ``paper=True`` marks the entries of the taxonomy
paper; the others are this project's extension axes.
"""
from __future__ import annotations

from dataclasses import dataclass

from prunetax.taxonomy.errors import SpecError

AXES = ("base_input", "pointwise", "reduction", "scaling", "structure", "aggregation")


@dataclass(frozen=True)
class Component:
    axis: str
    id: str
    description: str
    formula: str
    latex: str
    authors_name: str | None = None
    paper: bool = True

    def __str__(self) -> str:
        return self.id


_REGISTRY: dict[str, dict[str, Component]] = {axis: {} for axis in AXES}


def register_component(axis: str, id: str, description: str, formula: str, latex: str,
                       authors_name: str | None = None, paper: bool = False) -> Component:
    """Add a component to an axis. The metric engine needs a kernel of the same id to compute it."""
    if axis not in _REGISTRY:
        raise SpecError(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}")
    if not id or "-" in id or "@" in id or " " in id:
        raise SpecError(f"component id {id!r} must be non-empty without '-', '@' or spaces")
    if id in _REGISTRY[axis]:
        raise SpecError(f"{axis} {id!r} is already registered")
    comp = Component(axis, id, description, formula, latex, authors_name, paper)
    _REGISTRY[axis][id] = comp
    return comp


def unregister_component(axis: str, id: str) -> None:
    """Remove a component added with ``register_component`` (a plug-in's or a test's); the
    paper's components cannot be removed, unknown ids are ignored."""
    if axis not in _REGISTRY:
        raise SpecError(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}")
    comp = _REGISTRY[axis].get(id)
    if comp is not None and comp.paper:
        raise SpecError(f"{axis} {id!r} is one of the paper's components and cannot be removed")
    _REGISTRY[axis].pop(id, None)


def components(axis: str, paper_only: bool = False) -> tuple[Component, ...]:
    """The components of one axis in registration order (the order of every listing)."""
    if axis not in _REGISTRY:
        raise SpecError(f"unknown axis {axis!r}; choose one of {', '.join(AXES)}")
    return tuple(c for c in _REGISTRY[axis].values() if c.paper or not paper_only)


def ids(axis: str, paper_only: bool = False) -> tuple[str, ...]:
    return tuple(c.id for c in components(axis, paper_only))


def get(axis: str, name: str) -> Component:
    """Look a component up by its id or by the authors' name."""
    reg = _REGISTRY[axis]
    if name in reg:
        return reg[name]
    for comp in reg.values():
        if comp.authors_name == name:
            return comp
    label = axis.replace("_", " ")
    raise SpecError(f"unknown {label} {name!r}; choose one of {', '.join(reg)}")


_A = "base_input"
register_component(_A, "weight", "the channel's filter W_l[i,:,:,:] and its bias",
                   "X = W_l[i] plus bias b_l[i]", r"X = \{W_l[i,:,:,:],\ b_l[i]\}", "weight", True)
register_component(_A, "activation", "the channel's feature map at the mask point, per image",
                   "X = A_l[n, i, :, :] (H*W elements)", r"X = A_l[n,i,:,:]", "activation", True)
register_component(_A, "bn_weight", "the BatchNorm scale gamma_i of the producer's own BatchNorm",
                   "X = {gamma_l[i]}", r"X = \{\gamma_l[i]\}")
register_component(_A, "bn_bias", "the BatchNorm shift beta_i of the producer's own BatchNorm",
                   "X = {beta_l[i]}", r"X = \{\beta_l[i]\}")

_P = "pointwise"
register_component(_P, "value", "the element itself", "f = x", r"f = x", "average_input", True)
register_component(_P, "gradient", "the gradient of the image's own loss", "f = g = dL_n/dx",
                   r"f = \frac{\partial \mathcal{L}_n}{\partial x}", "average_gradient", True)
register_component(_P, "taylor", "first-order loss change when x goes to 0", "f = -x*g",
                   r"f = -x\,\frac{\partial \mathcal{L}_n}{\partial x}", "taylor", True)
register_component(_P, "hessian_lm", "second-order term, Levenberg-Marquardt diagonal curvature",
                   "f = x^2/2 * h_LM", r"f = \frac{x^2}{2}\,h^{LM}", "hessian_diag_approx1", True)
register_component(_P, "hessian_gn", "second-order term, Gauss-Newton (squared gradient) curvature",
                   "f = x^2/2 * g^2", r"f = \frac{x^2}{2}\,g^2", "hessian_diag_approx2", True)
register_component(_P, "taylor2_lm", "second-order Taylor expansion with the LM curvature",
                   "f = -x*g + x^2/2 * h_LM", r"f = -x\,g + \frac{x^2}{2}\,h^{LM}",
                   "taylor_2nd_approx1", True)
register_component(_P, "taylor2_gn", "second-order Taylor expansion with the GN curvature",
                   "f = -x*g + x^2/2 * g^2", r"f = -x\,g + \frac{x^2}{2}\,g^2",
                   "taylor_2nd_approx2", True)
register_component(_P, "indicator", "1 where the activation is positive (APoZ)",
                   "f = [x > 0]", r"f = \mathbb{1}[x > 0]")

_R = "reduction"
register_component(_R, "sum", "sum of f over the channel's elements", "R = sum f",
                   r"R = \sum_{x \in X} f", "none_norm", True)
register_component(_R, "l1", "sum of |f|", "R = sum |f|", r"R = \sum_{x \in X} |f|", "l1_norm", True)
register_component(_R, "l2", "sum of f^2 (no square root, as the authors)", "R = sum f^2",
                   r"R = \sum_{x \in X} f^2", "l2_norm", True)
register_component(_R, "abs_sum", "absolute value of the sum of f", "R = |sum f|",
                   r"R = \left|\sum_{x \in X} f\right|", "abs_sum_norm", True)
register_component(_R, "sqr_sum", "square of the sum of f", "R = (sum f)^2",
                   r"R = \left(\sum_{x \in X} f\right)^2", "sqr_sum_norm", True)

_S = "scaling"
register_component(_S, "none", "no scaling", "divisor = 1", r"d = 1", "no_normalisation", True)
register_component(_S, "elements", "the number of elements reduced (bias not counted)",
                   "divisor = |X| (H*W, or active C_in*k_h*k_w)", r"d = |X|",
                   "l0_normalisation_adjusted", True)
register_component(_S, "layer_l1", "the L1 norm of the layer's channel saliencies",
                   "divisor = ||S_l||_1", r"d = \lVert S_l \rVert_1", "l1_normalisation", True)
register_component(_S, "layer_l2", "the L2 norm of the layer's channel saliencies",
                   "divisor = ||S_l||_2", r"d = \lVert S_l \rVert_2", "l2_normalisation", True)
register_component(_S, "weights_removed", "the number of weights removed, transitively, with the channel",
                   "divisor = own filter + coupled filters + consumer slices",
                   r"d = |W_{removed}(c)|", "weights_removed", True)

_T = "structure"
register_component(_T, "channel", "each channel on its own; choosing it removes its unit",
                   "D(c) = S_l(c)", r"D(c) = S_l(c)", None, True)
register_component(_T, "domino_o", "plus the channels of every producer merged with it",
                   "D(c) = S_l(c) + sum_{l' in P(l)} S_l'(c)",
                   r"D(c) = S_l(c) + \sum_{l' \in P(l)} S_{l'}(c)", None, True)
register_component(_T, "domino_io", "domino_o plus every consumer's input slice",
                   "D(c) = domino_o(c) + sum_{k in C(l)} S_in^k(c)",
                   r"D(c) = S_l(c) + \sum_{l' \in P(l)} S_{l'}(c) + \sum_{k \in C(l)} S^k_{in}(c)",
                   None, True)

_G = "aggregation"
register_component(_G, "per_image", "reduce each image's elements, then average over images",
                   "S = (1/N) sum_n R({f(x_n)})", r"S = \frac{1}{N}\sum_n R(\{f(x_n)\})", None, True)
register_component(_G, "batch", "average f over the batch first, then reduce once (GFBS, Torch-Pruning)",
                   "S = R({(1/N) sum_n f(x_n)})", r"S = R(\{\frac{1}{N}\sum_n f(x_n)\})")
