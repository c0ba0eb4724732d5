"""prunetax list: what the names in the other commands can be (models, data sets, metrics, presets)."""
from __future__ import annotations

HELP = "list the models, data sets, named metrics or presets that the other commands accept, one per line"

WHAT = ("models", "datasets", "metrics", "presets")


def add_arguments(p) -> None:
    p.add_argument("what", choices=WHAT, help="models (the zoo and your registrations), datasets, metrics (the "
                                              "named literature metrics, random, oracle) or presets")
    p.add_argument("--pattern", metavar="GLOB", default=None, help="only names matching GLOB (e.g. 'resnet*')")


def _lines(what: str) -> list[tuple[str, str]]:
    """(name, one-line description) of each entry of ``what``."""
    if what == "presets":
        from prunetax.enumerate import PRESETS, metric_space
        return [(name, f"{len(metric_space(name))} metrics: {doc}") for name, doc in PRESETS.items()]
    if what == "metrics":
        from prunetax.benchmarks.cell import REFERENCES
        from prunetax.taxonomy import NAMED
        out = [(n.name, f"{n.definition}  ({n.citation})") for n in NAMED.values()]
        notes = {"random": "reference: a random removable unit each step",
                 "oracle": "reference: the myopic oracle (the removal with the lowest eval loss among candidates)"}
        return out + [(r, notes[r]) for r in REFERENCES]
    if what == "datasets":
        from prunetax.benchmarks.names import check_dataset, dataset_names   # no torch: answers at once
        out = [(d, f"{'grayscale' if check_dataset(d) == 1 else 'colour'}") for d in dataset_names()]
        return out + [("imagefolder:PATH", "colour images in PATH/train/<class>/ and PATH/test/<class>/ (or val/)")]
    from prunetax.benchmarks.models import list_models, model_info
    out = []
    for name in list_models():
        info = model_info(name)
        text = info.description or ""
        if not info.available:
            text += f" [unavailable: {info.reason}]"
        out.append((name, text))
    return out


def run(args) -> int:
    import fnmatch

    from prunetax.taxonomy.errors import PrunetaxError

    rows = _lines(args.what)
    if args.pattern:
        rows = [r for r in rows if fnmatch.fnmatchcase(r[0], args.pattern)]
        if not rows:
            raise PrunetaxError(f"--pattern {args.pattern!r} matches none of the {args.what}; "
                                f"run 'prunetax list {args.what}' to see them all")
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        print(f"{name.ljust(width)}  {text}".rstrip())
    return 0
