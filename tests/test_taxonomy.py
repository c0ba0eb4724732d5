"""Taxonomy and enumerator: ids round-trip, the 308/924 counts, the 42 exclusions, bad input."""
import itertools

import pytest
from hypothesis import given, settings, strategies as st

from prunetax.enumerate import excluded, metric_space
from prunetax.taxonomy import NAMED, MetricExpr, MetricSpec, SpecError, parse_metric

# Written out by hand from the taxonomy paper (as docs/taxonomy.md states it), independently of the registries.
PAPER_INPUTS = ["weight", "activation"]
PAPER_POINTWISE = {"value": "average_input", "gradient": "average_gradient", "taylor": "taylor",
                   "hessian_lm": "hessian_diag_approx1", "hessian_gn": "hessian_diag_approx2",
                   "taylor2_lm": "taylor_2nd_approx1", "taylor2_gn": "taylor_2nd_approx2"}
PAPER_REDUCTIONS = {"sum": "none_norm", "l1": "l1_norm", "l2": "l2_norm", "abs_sum": "abs_sum_norm",
                    "sqr_sum": "sqr_sum_norm"}
PAPER_SCALINGS = {"none": "no_normalisation", "elements": "l0_normalisation_adjusted",
                  "layer_l1": "l1_normalisation", "layer_l2": "l2_normalisation",
                  "weights_removed": "weights_removed"}


def all_350():
    return list(itertools.product(PAPER_INPUTS, PAPER_POINTWISE, PAPER_REDUCTIONS, PAPER_SCALINGS))


def protocol_exclusions():
    out = set()
    for b in PAPER_INPUTS:
        for r in ("sum", "l1", "abs_sum"):
            for s in PAPER_SCALINGS:
                out.add((b, "hessian_gn", r, s))
    for r in ("sum", "abs_sum", "sqr_sum"):
        for s in ("none", "layer_l1", "layer_l2", "weights_removed"):
            out.add(("weight", "taylor", r, s))
    return out


def test_counts():
    assert len(metric_space("paper")) == 308
    assert len(metric_space("domino")) == 924
    assert len(protocol_exclusions()) == 42


def test_paper_is_350_minus_the_42_protocol_exclusions():
    expected = {f"{b}-{p}-{r}-{s}" for (b, p, r, s) in all_350() if (b, p, r, s) not in protocol_exclusions()}
    got = [m.id for m in metric_space("paper")]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert {m.id for m, _ in excluded("paper")} == {"-".join(t) for t in protocol_exclusions()}


def test_domino_is_paper_times_three_structures():
    paper = {m.id for m in metric_space("paper")}
    domino = {m.id for m in metric_space("domino")}
    expected = paper | {f"{i}-domino_o" for i in paper} | {f"{i}-domino_io" for i in paper}
    assert domino == expected


@pytest.mark.parametrize("preset", ["paper", "domino", "extended"])
def test_every_spec_round_trips(preset):
    specs = metric_space(preset)
    assert len({s.id for s in specs}) == len(specs)
    for spec in specs:
        assert MetricSpec.parse(spec.id) == spec
        assert str(MetricSpec.parse(str(spec))) == spec.id
        if spec.authors_name:
            assert MetricSpec.parse(spec.authors_name) == spec


def test_authors_names_for_all_350():
    for b, p, r, s in all_350():
        authors = f"{b}-{PAPER_POINTWISE[p]}-{PAPER_REDUCTIONS[r]}-{PAPER_SCALINGS[s]}"
        spec = MetricSpec(b, p, r, s)
        assert spec.authors_name == authors
        assert MetricSpec.parse(authors).id == f"{b}-{p}-{r}-{s}"
    assert MetricSpec.parse("activation-taylor-abs_sum-none-domino_io").authors_name is None


def test_issue_examples():
    assert str(MetricSpec.parse("activation-taylor-abs_sum_norm-weights_removed")) == \
        "activation-taylor-abs_sum-weights_removed"
    assert str(MetricSpec.parse("weight-average_input-l2_norm-no_normalisation")) == "weight-value-l2-none"
    spec = MetricSpec.parse("activation-taylor-abs_sum-weights_removed-domino_io@batch")
    assert (spec.structure, spec.aggregation) == ("domino_io", "batch")
    assert str(spec) == "activation-taylor-abs_sum-weights_removed-domino_io@batch"
    assert str(MetricSpec.parse("activation-taylor-abs_sum-none-channel@per_image")) == "activation-taylor-abs_sum-none"


@pytest.mark.parametrize("text,needle", [
    ("activation-taylor-l3-none", "sum, l1, l2, abs_sum, sqr_sum"),
    ("activation-taylor-l1", "expected input-pointwise-reduction-scaling"),
    ("pixel-taylor-l1-none", "weight, activation"),
    ("activation-taylor-l1-none-domino_x", "channel, domino_o, domino_io"),
    ("activation-taylor-l1-none@", "per_image, batch"),
    ("weight-indicator-sum-none", "needs base input 'activation'"),
    ("bn_weight-value-l1-none-domino_io", "undefined"),
])
def test_bad_ids_name_the_bad_part(text, needle):
    with pytest.raises(SpecError) as info:
        MetricSpec.parse(text)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghilmnorstuvwxyz_-@0123456789 ", max_size=60))
def test_any_text_parses_and_round_trips_or_raises_spec_error(text):
    try:
        spec = MetricSpec.parse(text)
    except SpecError:
        return
    assert MetricSpec.parse(spec.id) == spec


_parts = st.tuples(*(st.sampled_from(v) for v in (
    ["weight", "activation", "bn_weight", "bn_bias"],
    list(PAPER_POINTWISE) + list(PAPER_POINTWISE.values()) + ["indicator"],
    list(PAPER_REDUCTIONS) + list(PAPER_REDUCTIONS.values()),
    list(PAPER_SCALINGS) + list(PAPER_SCALINGS.values()),
    ["", "-channel", "-domino_o", "-domino_io"],
    ["", "@per_image", "@batch"])))


@settings(max_examples=300, deadline=None)
@given(_parts)
def test_composed_texts_parse_to_their_components(parts):
    b, p, r, s, t, a = parts
    text = f"{b}-{p}-{r}-{s}{t}{a}"
    try:
        spec = MetricSpec.parse(text)
    except SpecError as exc:  # only the two semantic rules may refuse a well-formed text
        assert ("indicator" in text and b != "activation") or (b.startswith("bn_") and t == "-domino_io"), exc
        return
    assert spec.base_input == b
    assert spec.pointwise in (p, {v: k for k, v in PAPER_POINTWISE.items()}.get(p))
    assert spec.structure == (t[1:] or "channel") and spec.aggregation == (a[1:] or "per_image")
    assert MetricSpec.parse(spec.id) == spec


def test_filters():
    assert len(metric_space("paper", base_input="weight")) == 148  # 175 - 15 (hessian_gn) - 12 (taylor)
    assert len(metric_space("paper", base_input="activation")) == 160  # 175 - 15
    assert len(metric_space("paper", pattern="*-weights_removed")) == 61
    wr = metric_space("paper", scaling="weights_removed")
    assert all(m.scaling == "weights_removed" for m in wr) and len(wr) == 2 * 32 - 3  # per input 7x5-3 hessian_gn; weight-taylor drops 3 more
    assert [m.id for m in metric_space("paper", pattern="*taylor2_gn-l2-weights*")] == [
        "weight-taylor2_gn-l2-weights_removed", "activation-taylor2_gn-l2-weights_removed"]
    assert len(metric_space("domino", structure=["domino_o"], reduction="l1_norm")) == 2 * 7 * 5 - 2 * 5  # hessian_gn-l1 dropped


def test_extended_count_by_hand():
    # activation: (7 pointwise x 5 reductions - 3 hessian_gn) x 5 scalings + indicator (sum, sqr_sum) x 5
    act = ((7 * 5 - 3) * 5 + 2 * 5) * 3 * 2  # x 3 structures x 2 aggregations
    # weight: 148 per structure; batch drops value (5 x 5)
    wgt = 148 * 3 + (148 - 25) * 3
    # BatchNorm inputs: reductions sum/l1/l2, scalings without elements, hessian_gn only l2, 2 structures
    per = (6 * 3 + 1) * 4
    bn = (per * 2 + (per - 3 * 4) * 2) * 2
    assert len(metric_space("extended")) == act + wgt + bn
    ids = {m.id for m in metric_space("extended")}
    assert {m.id for m in metric_space("domino")} <= ids


def test_named_metrics_and_expressions():
    assert str(parse_metric("filter_l1")) == "weight-value-l1-none"
    assert str(parse_metric("taylor_molchanov")) == "activation-taylor-abs_sum-elements"
    gfbs = parse_metric("gfbs")
    assert isinstance(gfbs, MetricExpr)
    assert str(gfbs) == ("bn_weight-value-l1-layer_l2 * bn_weight-gradient-l1-layer_l2@batch"
                         " + 0.05 * bn_bias-value-sum-layer_l2")
    assert parse_metric(str(gfbs)) == gfbs
    values = {s: v for s, v in zip(gfbs.specs, (2.0, 3.0, 10.0))}
    assert gfbs.evaluate(values) == pytest.approx(2.0 * 3.0 + 0.05 * 10.0)
    a, b = MetricSpec.parse("weight-value-l1-none"), MetricSpec.parse("activation-value-l1-none")
    assert str(2 * a + a * b) == "2 * weight-value-l1-none + weight-value-l1-none * activation-value-l1-none"
    for name, named in NAMED.items():
        assert named.citation and parse_metric(name) is not None
    with pytest.raises(SpecError, match="unknown named metric"):
        parse_metric("not_a_metric")
