"""Importers turn logs and public traces that users already have into gpuledger traces.

Each importer is one module exposing ``NAME``, ``HELP``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args, out_path) -> summary``; registering it is
one line in ``_MODULES``. The CLI builds ``gpuledger import NAME SOURCE --out FILE``
from :data:`IMPORTERS`, so a new importer needs no CLI change. Importers raise
:class:`collectors.errors.InputError` for bad input and write through
:class:`collectors.tracewriter.TraceWriter`, so nothing partial is left behind.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from collectors.importers import alibaba_genai, nvidia_smi


@dataclass(frozen=True)
class Importer:
    """One ``gpuledger import`` format."""

    name: str  # the CLI word: `gpuledger import NAME`
    help: str  # one line for `gpuledger import --help`
    description: str  # a paragraph for `gpuledger import NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]  # source positional + options, not --out
    run: Callable[[argparse.Namespace, Path], str]  # writes the trace, returns a one-line summary


def from_module(module: ModuleType) -> Importer:
    """The registry entry of an importer module (its NAME, HELP, DESCRIPTION and two functions)."""
    return Importer(
        name=module.NAME,
        help=module.HELP,
        description=module.DESCRIPTION,
        add_arguments=module.add_arguments,
        run=module.run,
    )


_MODULES: tuple[ModuleType, ...] = (
    nvidia_smi,
    alibaba_genai,
)

IMPORTERS: dict[str, Importer] = {imp.name: imp for imp in map(from_module, _MODULES)}
