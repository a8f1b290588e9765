"""``gpuledger prices show``: what a node's GPU costs, and why.

A price that cannot be explained cannot be trusted or corrected, so this prints the
source and the entry that priced the node, what each earlier source said, and the
commitment options the recommenders would weigh. It runs the same
:class:`~collectors.pricing.chain.PriceChain` the agent runs.

Wired into ``agent/cli.py`` by ``cmd_prices.register(sub)``.
"""

from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from importlib import resources
from typing import Mapping, TextIO

from collectors.errors import InputError
from collectors.pricing.sources import SOURCES

LABELS_FLAG = "--node-labels"


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``prices show`` to a CLI's subparsers; returns the ``prices`` parser."""
    p = subparsers.add_parser(
        "prices", help="show what a node's GPUs cost and where the price comes from",
        description="Price sources, in order: your rate card's nodes and gpus entries, the cloud "
        f"price APIs (with {' / '.join(s.flag for s in SOURCES)}), the bundled snapshot, the default. "
        "See docs/pricing.md.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="price one node from its labels",
        description="Print the hourly price of one GPU on a node with the given labels, the source and "
        "entry it came from, why earlier sources did not price it, and its commitment options.",
    )
    show.add_argument(LABELS_FLAG, required=True, metavar="K=V,...",
                      help="the node's labels, e.g. node.kubernetes.io/instance-type=p5.48xlarge,"
                      "topology.kubernetes.io/region=us-east-1,karpenter.sh/capacity-type=spot")
    show.add_argument("--gpu-model", metavar="MODEL",
                      help="the GPU's NVML name, e.g. 'NVIDIA H100 80GB HBM3' (default: known from the "
                      "instance type when the snapshot lists it)")
    show.add_argument("--gpus", type=int, metavar="N",
                      help="physical GPUs on the node (default: known from the instance type, else 1)")
    show.add_argument("--rates", metavar="FILE", help="your rate card (YAML, docs/rate-card.md)")
    for source in SOURCES:
        show.add_argument(source.flag, dest=source.name, action="store_true", help=source.flag_help)
    show.add_argument("--cache", metavar="DIR", help="keep API answers in DIR/prices.json between runs")
    show.set_defaults(handler=run_show)
    return p


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` as a mapping; a malformed item is an InputError naming the flag."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected KEY=VALUE items separated by commas, got {item!r}", field=LABELS_FLAG)
        labels[key.strip()] = value.strip()
    if not labels:
        raise InputError("expected at least one KEY=VALUE label", field=LABELS_FLAG)
    return labels


def run_show(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from agent.live import price_chain, requested_sources
    from collectors.nodelabels import pricing_labels
    from collectors.pricing.ratecard import load_rate_card
    from collectors.pricing.sources import require_packages

    out = out or sys.stdout
    labels = parse_labels(args.node_labels)
    if args.gpus is not None and args.gpus < 1:
        raise InputError(f"expected a number of GPUs of at least 1, got {args.gpus}", field="--gpus")
    names = requested_sources(args)
    require_packages(names)
    card = load_rate_card(args.rates) if args.rates else None
    hint_model, hint_gpus = machine_hint(pricing_labels(labels).instance_type)
    model = args.gpu_model or hint_model or ""
    gpus = args.gpus or hint_gpus or 1
    chain = price_chain(card, names, args.cache)
    explained = chain.explain(labels, model, gpus)
    write_explanation(out, labels, model, gpus, chain.currency, explained, chain.commitments(labels, model),
                      guessed=(args.gpus is None, args.gpu_model is None))
    return 0


def write_explanation(out: TextIO, labels: Mapping[str, str], model: str, gpus: int, currency: str,
                      explained, commitments, guessed: tuple[bool, bool] = (False, False)) -> None:
    price = explained.price
    out.write("node: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "\n")
    out.write(f"GPUs: {gpus} x {model or '(model not given)'}"
              + (" (GPU count from the instance type)" if guessed[0] and gpus > 1 else "") + "\n")
    out.write(f"price: {price.hourly:.6g} {currency} per GPU-hour ({price.per_second:.6g} per GPU-second)\n")
    if explained.node_hourly is not None:
        out.write(f"whole node: {explained.node_hourly:.6g} {currency} per hour\n")
    out.write(f"source: {price.source}\n")
    out.write(f"entry: {explained.entry}\n")
    if explained.steps:
        out.write("passed over:\n")
        for step in explained.steps:
            out.write(f"  {step.source}: {step.outcome}: {step.detail}\n")
    if commitments:
        out.write("commitment options (hourly per committed unit):\n")
        for commitment in commitments:
            unit = (", ".join(f"{k}={v}" for k, v in commitment.match.items()) if commitment.match
                    else f"one {commitment.gpu_model} GPU")
            for option in commitment.options:
                out.write(f"  {option.kind} {option.term_years}y {option.payment}: {option.hourly:.6g}/h "
                          f"per {unit} ({option.source})\n")
    out.write("MIG slices cost their share of this price (g/G of the GPU); time-shared pods split it by use.\n")


@lru_cache(maxsize=1)
def _snapshot_machines() -> dict[str, tuple[str, int]]:
    """Instance type -> (GPU model, GPUs) from the bundled snapshot's descriptive fields."""
    import yaml

    text = resources.files("collectors.pricing").joinpath("snapshot.yaml").read_text(encoding="utf-8")
    found: dict[str, tuple[str, int]] = {}
    for entry in (yaml.safe_load(text) or {}).get("nodes") or []:
        it = (entry.get("match") or {}).get("node.kubernetes.io/instance-type")
        if it and entry.get("gpu_model") and entry.get("gpus"):
            found.setdefault(it, (str(entry["gpu_model"]), int(entry["gpus"])))
    return found


def machine_hint(instance_type: str | None) -> tuple[str | None, int | None]:
    """The GPU model and count an instance or machine type is known to carry."""
    if not instance_type:
        return None, None
    from collectors.pricing.gcp import MACHINES, SKU_TO_NVML

    shape = MACHINES.get(instance_type)
    if shape is not None:
        return SKU_TO_NVML.get(shape.gpu), shape.gpus
    return _snapshot_machines().get(instance_type, (None, None))
