"""``make bench``: run every benchmark section and write ``benchmarks/RESULTS.md``.

Each ``benchmarks/bench_*.py`` module exposes ``TITLE`` and ``run(quick: bool) -> str`` returning
a Markdown section (tables and a sentence on what the figures show). This script stamps each
section with the machine, the command and the date, so every figure says where it came from.

    python -m benchmarks.run                 # every section
    python -m benchmarks.run ngram speed     # the sections whose module name contains a word
    python -m benchmarks.run --quick         # smaller sizes, for a smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
MARK = "<!-- section: {} -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        return "unknown"


def sections() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def replace_section(text: str, name: str, body: str) -> str:
    """Keep the other sections of RESULTS.md; replace (or append) this one."""
    start, end = MARK.format(name), MARK.format(name + ":end")
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run the sections whose name contains a word")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke check)")
    args = parser.parse_args(argv)
    chosen = [s for s in sections() if not args.only or any(w in s for w in args.only)]
    for name in chosen:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {module.TITLE}", flush=True)
        body = module.run(quick=args.quick)
        command = f"python -m benchmarks.run {name.removeprefix('bench_')}"
        write_section(name, module.TITLE, body, command + (" --quick" if args.quick else ""))
    print(f"wrote {RESULTS}", file=sys.stderr)


def write_section(name: str, title: str, body: str, command: str) -> None:
    """Stamp a section with the machine, the command, the commit and the date; write it into
    RESULTS.md in place of its earlier version."""
    stamp = (
        f"_Machine: {machine()}. Command: `{command}` at commit {commit()}. "
        f"Date: {dt.date.today().isoformat()}._"
    )
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    print(section, flush=True)
    # read just before writing: another section may have been written meanwhile
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(replace_section(text, name, section))  # a later failure keeps this one


if __name__ == "__main__":
    main()
