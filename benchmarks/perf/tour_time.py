"""Time the README's tour as a new user would run it: from an empty cache, in a fresh folder.

    python -m benchmarks.perf.tour_time [--readme README.md] [--keep DIR]

Extracts the bash block under "## A tour" of the README, runs each command (continuation lines
joined) with bash in a new temporary folder, with PRUNETAX_CACHE pointing at an empty folder
inside it, and prints per command: exit status, wall seconds and the 1-minute load average
before it started. Stops at the first command that fails (exit 1). The last line is
`tour: T min in all, load L0-L1, all exited 0`.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tour_commands(readme: str) -> list[str]:
    """The commands of the first ```bash block after the '## A tour' heading, continuations joined."""
    match = re.search(r"^## A tour.*?^```bash\n(.*?)^```", readme, flags=re.S | re.M)
    if match is None:
        raise SystemExit("tour_time: no '## A tour' heading followed by a ```bash block in the README")
    commands: list[str] = []
    pending = ""
    for line in match.group(1).splitlines():
        if not line.strip() and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append((pending + line).strip())
        pending = ""
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[2] / "README.md"))
    parser.add_argument("--keep", default=None, help="run in this (new, empty) folder and keep it")
    args = parser.parse_args(argv)
    commands = tour_commands(Path(args.readme).read_text())
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prunetax-tour-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PRUNETAX_CACHE=str(folder / "cache"))
    print(f"tour: {len(commands)} commands in {folder}, PRUNETAX_CACHE={env['PRUNETAX_CACHE']}, "
          f"{os.cpu_count()} cores", flush=True)
    loads = []
    total = 0.0
    for number, command in enumerate(commands, 1):
        load = os.getloadavg()[0]
        loads.append(load)
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
        total += seconds
        short = command.split("#")[0].strip()
        print(f"[{number:2d}] exit {done.returncode}  {seconds:7.1f} s  load {load:4.1f}  {short}", flush=True)
        if done.returncode != 0:
            print(done.stdout[-3000:])
            print(f"tour: command {number} exited {done.returncode} after {total / 60:.1f} min")
            return 1
    loads.append(os.getloadavg()[0])
    print(f"tour: {total / 60:.1f} min in all, load {min(loads):.1f}-{max(loads):.1f}, all exited 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
