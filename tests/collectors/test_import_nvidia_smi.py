"""The nvidia-smi importer: hand-made logs with known values, and the real captures.

Every test writes a trace through the importer's CLI entry (``run``) and reads it back
with ``iter_records``, which validates every line against trace format v1.
"""

from __future__ import annotations

import argparse
import calendar
import gzip
import re
import shutil
from pathlib import Path

import pytest

from collectors.errors import InputError
from collectors.importers import IMPORTERS
from collectors.importers import nvidia_smi
from collectors.records import DevicesRecord, Meta, NodeRecord, PodsRecord, Sample
from collectors.tracefile import iter_records
from tests.conftest import shared_data

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvidia_smi"
MIB = 1 << 20


def run_import(source: Path, out: Path, *options: str) -> tuple[str, list]:
    """Run the importer as `gpuledger import nvidia-smi SOURCE --out OUT OPTIONS` would."""
    importer = IMPORTERS["nvidia-smi"]
    parser = argparse.ArgumentParser()
    importer.add_arguments(parser)
    args = parser.parse_args([str(source), *options])
    summary = importer.run(args, out)
    return summary, [record for _, record in iter_records(out)]


def utc(text: str) -> float:
    """'2026/07/14 08:00:00.100' read as UTC, by a different route than the importer's."""
    whole, _, frac = text.partition(".")
    y, mo, d, h, mi, s = (int(x) for x in re.split(r"[/ :]", whole))
    return calendar.timegm((y, mo, d, h, mi, s)) + (int(frac) / 1000 if frac else 0)


def samples(records) -> list[Sample]:
    return [r for r in records if isinstance(r, Sample)]


def error_of(source: Path, tmp_path: Path, *options: str) -> InputError:
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError) as info:
        run_import(source, out, *options)
    assert not out.exists(), "nothing may be written when the input is bad"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "no temporary left behind"
    return info.value


# --------------------------------------------------------------------------- hand-made logs


def test_l_log_with_repeated_reordered_header_and_extra_fields(tmp_path):
    summary, records = run_import(FIXTURES / "l_log.csv", tmp_path / "t.jsonl", "--utc-offset", "+02:00")
    meta, node, devices = records[:3]
    assert meta == Meta(interval_s=5.0, source="nvidia-smi")
    t0 = utc("2026/07/14 08:00:00.100")  # 10:00 on a host two hours east of UTC
    assert node == NodeRecord(ts=t0, node="gpu-host-1")  # hostname column names the node
    assert isinstance(devices, DevicesRecord) and devices.ts == t0 and devices.node == "gpu-host-1"
    assert [(d.uuid, d.index, d.model, d.memory_total_bytes) for d in devices.devices] == [
        ("GPU-a1000000-0000-0000-0000-000000000000", 0, "NVIDIA A100-SXM4-40GB", 40960 * MIB),
        ("GPU-a1000000-0000-0000-0000-000000000001", 1, "NVIDIA A100-SXM4-40GB", 40960 * MIB),
    ]
    assert not any(isinstance(r, PodsRecord) for r in records)
    got = [(s.ts, s.uuid[-1], s.interval_s, s.util, s.mem_used_bytes, s.power_w) for s in samples(records)]
    assert got == [
        (t0, "0", 5.0, 10.0, 1024 * MIB, 60.5),
        (utc("2026/07/14 08:00:00.150"), "1", 5.0, 0.0, 0.0, 55.0),
        (utc("2026/07/14 08:00:05.100"), "0", 5.0, 20.0, 2048 * MIB, 61.25),
        (utc("2026/07/14 08:00:05.152"), "1", 5.002, 5.0, 512 * MIB, 56.0),
        # after the repeated header, in its new field order
        (utc("2026/07/14 08:00:10.100"), "0", 5.0, 30.0, 4096 * MIB, 150.0),
        (utc("2026/07/14 08:00:10.150"), "1", 4.998, 0.0, 512 * MIB, 55.5),
    ]
    assert len(records) == 3 + 6
    assert "6 samples of 2 GPU(s) on gpu-host-1" in summary


def test_utc_offset_default_is_utc_and_node_flag_wins(tmp_path):
    _, records = run_import(FIXTURES / "l_log.csv", tmp_path / "t.jsonl", "--node", "box")
    first = samples(records)[0]
    assert first.ts == utc("2026/07/14 10:00:00.100")
    assert {r.node for r in records[1:]} == {"box"}


@pytest.mark.parametrize("text, hours", [("0", 0), ("2", 2), ("-5", -5), ("+05:30", 5.5), ("-08:00", -8), ("5.5", 5.5)])
def test_utc_offset_forms(text, hours):
    assert nvidia_smi.parse_offset(text) == hours * 3600


@pytest.mark.parametrize("text", ["x", "25", "+5:3", "nan"])
def test_utc_offset_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        nvidia_smi.parse_offset(text)


def test_new_gpu_reemits_devices_and_long_gap_counts_one_interval(tmp_path):
    _, records = run_import(FIXTURES / "new_gpu.csv", tmp_path / "t.jsonl")
    kinds = [type(r).__name__ for r in records]
    assert kinds == ["Meta", "NodeRecord", "DevicesRecord", "Sample", "Sample", "Sample",
                     "DevicesRecord", "Sample", "Sample"]
    assert records[1].node == "nvidia-smi"  # no hostname column, no --node
    first, second = records[2], records[6]
    assert [d.uuid[-1] for d in first.devices] == ["0"]
    assert [d.uuid[-1] for d in second.devices] == ["0", "1"]  # the full inventory again
    assert second.ts == records[7].ts == utc("2026/07/14 12:00:02.010")
    assert records[7].uuid.endswith("1")
    late = records[8]
    assert late.ts == utc("2026/07/14 12:01:00.000")
    assert late.interval_s == 1.0  # 58 s since the previous row: the log was not running
    assert records[0].interval_s == 1.0


def test_max_gap_flag(tmp_path):
    _, records = run_import(FIXTURES / "new_gpu.csv", tmp_path / "t.jsonl", "--max-gap", "100")
    assert samples(records)[-1].interval_s == 58.0


def test_noheader_nounits_with_fields(tmp_path):
    fields = "timestamp,index,name,memory.total,memory.used,utilization.gpu,power.draw"
    _, records = run_import(FIXTURES / "noheader_nounits.csv", tmp_path / "t.jsonl", "--fields", fields)
    devices = records[2]
    assert [(d.uuid, d.index, d.model, d.memory_total_bytes) for d in devices.devices] == [
        ("GPU-index-0", 0, "Tesla T4", 15360 * MIB)]
    got = [(s.ts, s.interval_s, s.util, s.mem_used_bytes, s.power_w) for s in samples(records)]
    assert got == [
        (utc("2026/07/14 09:30:00"), 2.0, 37.0, 1200 * MIB, 27.31),
        (utc("2026/07/14 09:30:02"), 2.0, 45.0, 1300 * MIB, 30.02),
        (utc("2026/07/14 09:30:04"), 2.0, 0.0, 1250 * MIB, 26.0),  # after a blank line
    ]


def test_noheader_without_fields_says_what_to_do(tmp_path):
    err = error_of(FIXTURES / "noheader_nounits.csv", tmp_path)
    assert (err.file, err.line) == (str(FIXTURES / "noheader_nounits.csv"), 1)
    assert "--fields" in err.message


def test_na_values_are_null(tmp_path):
    _, records = run_import(FIXTURES / "na_values.csv", tmp_path / "t.jsonl")
    assert records[2].devices[0].index is None
    got = [(s.util, s.mem_used_bytes, s.power_w) for s in samples(records)]
    assert got == [(None, None, None), (None, 812 * MIB, None)]


def test_mig_gpu_has_null_util(tmp_path):
    _, records = run_import(FIXTURES / "mig.csv", tmp_path / "t.jsonl")
    (device,) = records[2].devices
    assert device.model == "NVIDIA H100 80GB HBM3" and device.memory_total_bytes == 81559 * MIB
    assert device.parent_uuid is None  # --query-gpu reports the whole GPU, not its slices
    got = [(s.util, s.mem_used_bytes, s.power_w) for s in samples(records)]
    assert got == [(None, 59 * MIB, 71.15), (None, 11125 * MIB, 433.78)]


def test_gzip_output(tmp_path):
    out = tmp_path / "t.jsonl.gz"
    _, records = run_import(FIXTURES / "mig.csv", out)
    assert gzip.decompress(out.read_bytes()).startswith(b'{"kind":"meta"')
    assert len(records) == 5


def test_utf16_and_crlf_logs_from_windows(tmp_path):
    """PowerShell's `>` writes UTF-16 with a byte-order mark; Windows lines end in CRLF."""
    text = (FIXTURES / "mig.csv").read_text().replace("\n", "\r\n")
    source = tmp_path / "log.csv"
    source.write_bytes(text.encode("utf-16"))
    _, records = run_import(source, tmp_path / "t.jsonl")
    assert [s.mem_used_bytes for s in samples(records)] == [59 * MIB, 11125 * MIB]


# --------------------------------------------------------------------------- mistakes


def test_binary_file_is_an_input_error(tmp_path):
    source = tmp_path / "log.csv"
    source.write_bytes(HEADER.encode() + b"\xff\xff\n")
    err = error_of(source, tmp_path)
    assert err.file == str(source) and "UTF-8" in err.message


def test_bad_value_names_file_line_and_field(tmp_path):
    err = error_of(FIXTURES / "bad_value.csv", tmp_path)
    assert (err.file, err.line, err.field) == (str(FIXTURES / "bad_value.csv"), 3, "memory.used")
    assert str(err) == f"{FIXTURES / 'bad_value.csv'}:3: field 'memory.used': expected a number, got '12x MiB'"


def test_missing_column_names_the_header_line_and_field(tmp_path):
    err = error_of(FIXTURES / "missing_column.csv", tmp_path)
    assert (err.file, err.line, err.field) == (str(FIXTURES / "missing_column.csv"), 1, "utilization.gpu")
    assert "utilization.gpu" in err.message


HEADER = "timestamp, name, uuid, index, memory.total [MiB], memory.used [MiB], utilization.gpu [%], power.draw [W]\n"
GOOD = "2026/07/14 11:00:00.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, 40.00 W\n"


@pytest.mark.parametrize("row, field, words", [
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 150 %, 40.00 W", "utilization.gpu", "percentage from 0 to 100"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 W, 40.00 W", "utilization.gpu", "percentage"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, -5 MiB, 3 %, 40.00 W", "memory.used", "at least 0"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 5 MHz, 3 %, 40.00 W", "memory.used", "MiB"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, -1 W", "power.draw", "watts"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, nan W", "power.draw", "number"),
    ("2026/13/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, 40.00 W", "timestamp", "time such as"),
    ("yesterday, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, 40.00 W", "timestamp", "time such as"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, x, 23028 MiB, 500 MiB, 3 %, 40.00 W", "index", "whole number"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, [N/A], [N/A], 23028 MiB, 500 MiB, 3 %, 40.00 W", "uuid", "uuid (or its index)"),
    ("2026/07/14 11:00:01.000, [N/A], GPU-2, 1, 23028 MiB, 500 MiB, 3 %, 40.00 W", "name", "product name"),
    ("2026/07/14 11:00:00.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %, 40.00 W", "timestamp", "already has a row at this time (line 2)"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 1, 23028 MiB, 500 MiB, 3 %, 40.00 W", "uuid", "was GPU index 0 (line 2)"),
    ("2026/07/14 11:00:01.000, NVIDIA A10G, GPU-1, 0, 23028 MiB, 500 MiB, 3 %", None, "expected 8 comma-separated values as in the header on line 1, got 7"),
])
def test_bad_row_names_line_and_field(tmp_path, row, field, words):
    source = tmp_path / "log.csv"
    source.write_text(HEADER + GOOD + row + "\n")
    err = error_of(source, tmp_path)
    assert (err.file, err.line, err.field) == (str(source), 3, field)
    assert words in err.message


def test_empty_log_is_an_error(tmp_path):
    source = tmp_path / "log.csv"
    source.write_text(HEADER)
    assert "no GPU rows" in str(error_of(source, tmp_path))


def test_missing_file_is_an_input_error(tmp_path):
    err = error_of(tmp_path / "absent.csv", tmp_path)
    assert err.file == str(tmp_path / "absent.csv") and "cannot read" in err.message


def test_fields_without_a_required_field(tmp_path):
    err = error_of(FIXTURES / "noheader_nounits.csv", tmp_path, "--fields", "timestamp,index,name,memory.used")
    assert err.field == "memory.total" and err.file == "--fields"


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("text, unit, expected", [
    ("1234 MiB", None, (1234.0, "MiB")), ("45 %", None, (45.0, "%")), ("70.12 W", None, (70.12, "W")),
    ("1234", "MiB", (1234.0, "MiB")), ("45%", None, (45.0, "%")), ("0.5", None, (0.5, None)),
])
def test_parse_number(text, unit, expected):
    assert nvidia_smi.parse_number(text, unit) == expected


@pytest.mark.parametrize("text", ["[N/A]", "[Not Supported]", "N/A", "", "[Unknown Error]",
                                  "[Requested functionality has been deprecated]"])
def test_missing_values(text):
    assert nvidia_smi.is_missing(text)


def test_registry_entry():
    importer = IMPORTERS["nvidia-smi"]
    assert importer.name == "nvidia-smi" and importer.run is nvidia_smi.run
    assert "--utc-offset" in importer.description and "\n" not in importer.help


# --------------------------------------------------------------------------- real captures


@pytest.fixture(scope="module")
def captures() -> Path:
    data = shared_data()
    if data is None or not (data / "nvidia-smi-captures").is_dir():
        pytest.skip("real nvidia-smi captures not found: set GPULEDGER_SHARED_DATA or check out "
                    "../shared/data beside the project (see shared/data/README.md)")
    return data / "nvidia-smi-captures"


def query_gpu_sections(path: Path) -> dict[str, list[str]]:
    """The CSV lines of each `query-gpu (csv ...)` section of a capture, by phase (idle, load)."""
    lines = path.read_text().splitlines()
    sections = {}
    for i, line in enumerate(lines):
        match = re.match(r"# (\w+) :: query-gpu \(csv", line)
        if not match:
            continue
        j = i + 1
        while lines[j].startswith("#"):
            j += 1
        k = j
        while k < len(lines) and lines[k].strip() and not lines[k].startswith("#"):
            k += 1
        sections[match.group(1)] = lines[j:k]
    return sections


def by_header(lines: list[str]) -> list[dict[str, str]]:
    """Rows as dicts, split on ', ' (how nvidia-smi separates), not through the csv module."""
    header = lines[0].split(", ")
    rows = [line.split(", ") for line in lines[1:]]
    assert all(len(r) == len(header) for r in rows)
    return [dict(zip(header, r)) for r in rows]


def expected_number(text: str) -> float | None:
    return None if text.startswith("[") else float(text.split(" ")[0])


# Read by hand from the captures, as a check on the independent parse as well.
HAND_READ = {
    ("nvidia-h100-80gb-hbm3", "load"): ("NVIDIA H100 80GB HBM3", 81559, 19818, 100.0, 631.95),
    ("nvidia-h100-mig", "load"): ("NVIDIA H100 80GB HBM3", 81559, 11125, None, 433.78),
    ("nvidia-h200", "load"): ("NVIDIA H200", 143771, 32362, 100.0, 627.40),
    ("nvidia-h200-mig", "idle"): ("NVIDIA H200", 143771, 55, None, 78.28),
    ("nvidia-l40s", "load"): ("NVIDIA L40S", 46068, 1235, 9.0, 110.23),
}


def capture_files(captures: Path) -> list[Path]:
    files = sorted(captures.glob("*.txt"))
    assert len(files) >= 5
    return files


def test_real_captures_import_like_an_independent_read(captures, tmp_path):
    seen_hand = set()
    for path in capture_files(captures):
        gpu = path.name.split("__")[1]
        sections = query_gpu_sections(path)
        assert set(sections) == {"idle", "load"}, path.name
        for phase, lines in sections.items():
            source = tmp_path / f"{gpu}-{phase}.csv"
            source.write_text("\n".join(lines) + "\n")
            _, records = run_import(source, tmp_path / f"{gpu}-{phase}.jsonl")
            (row,) = by_header(lines)
            assert len(row) > 200  # the ~300-field query, of which we read a few
            (device,) = records[2].devices
            (sample,) = samples(records)
            assert device.model == row["name"]
            assert device.uuid == row["uuid"]
            assert device.memory_total_bytes == int(row["memory.total [MiB]"].split()[0]) * MIB
            assert sample.util == expected_number(row["utilization.gpu [%]"])
            assert sample.mem_used_bytes == int(row["memory.used [MiB]"].split()[0]) * MIB
            assert sample.power_w == expected_number(row["power.draw [W]"])
            assert sample.ts == utc(row["timestamp"])
            assert records[1].node == "nvidia-smi"  # the hostname column reads [N/A]
            if row["mig.mode.current"] == "Enabled":
                assert sample.util is None
            hand = HAND_READ.get((gpu, phase))
            if hand:
                name, total, used, util, power = hand
                assert (device.model, device.memory_total_bytes, sample.mem_used_bytes, sample.util, sample.power_w) == (
                    name, total * MIB, used * MIB, util, power)
                seen_hand.add((gpu, phase))
    assert seen_hand == set(HAND_READ)


def test_real_capture_idle_then_load_as_one_log_with_repeated_header(captures, tmp_path):
    """Two `nvidia-smi` runs appended to one file: the header repeats, the gap is the interval."""
    path = next(p for p in capture_files(captures) if "h100-80gb" in p.name)
    sections = query_gpu_sections(path)
    source = tmp_path / "log.csv"
    source.write_text("\n".join(sections["idle"] + sections["load"]) + "\n")
    _, records = run_import(source, tmp_path / "t.jsonl")
    idle, load = by_header(sections["idle"])[0], by_header(sections["load"])[0]
    gap = round(utc(load["timestamp"]) - utc(idle["timestamp"]), 3)
    assert records[0].interval_s == pytest.approx(gap)
    got = [(s.util, s.mem_used_bytes, s.interval_s) for s in samples(records)]
    assert got == [(0.0, 0.0, pytest.approx(gap)), (100.0, 19818 * MIB, pytest.approx(gap))]
    assert sum(isinstance(r, DevicesRecord) for r in records) == 1
