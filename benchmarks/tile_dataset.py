"""Tile a gathered dataset into a larger fleet: N copies of every file, each copy's nodes,
devices, pods and workloads renamed, so the copies are N times the GPUs, not the same GPUs
counted N times.

    PYTHONPATH=. python benchmarks/tile_dataset.py SOURCE DEST --copies 8

SOURCE is a dataset as ``report_dataset_bench.py`` writes it (``date=YYYY-MM-DD/*.parquet``;
keep one with ``--dataset``, or see that script's ``work`` directory). The 100M-row figure
of ``benchmarks/README.md`` is the 1,024-GPU week tiled 8 times: 8,192 GPUs, 100,558,080
rows in 11,008 node-day files. Workload names are renamed too, so the report sees eight
times the workloads (each with its own evidence), as a fleet that size would have.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RENAMED = ("node", "device_uuid", "parent_uuid", "pod_uid", "pod", "workload_name")


def tile(source: Path, dest: Path, copies: int) -> int:
    """Write ``copies`` renamed copies of every file of ``source`` under ``dest``; the files written."""
    files = sorted(source.glob("date=*/*.parquet"))
    if not files:
        raise SystemExit(f"{source}: no date=YYYY-MM-DD/*.parquet files")
    written = 0
    for n, path in enumerate(files):
        table = pq.read_table(path)
        out = dest / path.parent.name
        out.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            columns, fields = [], []
            for field, column in zip(table.schema, table.columns):
                if field.name in RENAMED:  # nulls (a row no pod held) stay null
                    column = pc.binary_join_element_wise(column.cast(pa.string()), pa.scalar(f"-t{k}"), "")
                    field = field.with_type(pa.string())
                columns.append(column)
                fields.append(field)
            copy = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))
            pq.write_table(copy, out / f"{path.stem}-t{k}.parquet", compression="snappy")
            written += 1
        if n % 200 == 0:
            print(f"{n:,} of {len(files):,} files", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--copies", type=int, default=8)
    args = parser.parse_args()
    print(f"wrote {tile(args.source, args.dest, args.copies):,} files under {args.dest}")


if __name__ == "__main__":
    main()
