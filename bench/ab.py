"""Before/after: run ``profile_client.py`` on two copies of hutch's source, interleaved.

Keep a copy of the tree before a change (``cp -r src /tmp/before/``), make the change, then::

    .venv/bin/python bench/ab.py /tmp/before/src src --node DIR [--rounds 7] [--only cycle,rpc]

Each round runs the scenarios once per tree (alternating which goes first) in fresh processes
with ``PYTHONPATH`` pointing at that tree, and the medians of client CPU per message and of the
rate are printed with their ratio. Pairing runs this way keeps the machine's noise (other
processes, CPU frequency) out of the comparison as far as it can be.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = re.compile(r"^(?P<name>.+?): (?P<rate>[\d,]+)/s, client CPU (?P<cpu>[\d.]+) µs/msg")


def run(tree: Path, args: argparse.Namespace, scenario: str) -> dict[str, tuple[float, float]]:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    cmd = [
        sys.executable,
        str(HERE / "profile_client.py"),
        "--no-profile",
        "--count",
        str(args.count),
        "--only",
        scenario,
    ]
    if args.node:
        cmd += ["--node", str(args.node)]
    if args.uvloop:
        cmd.append("--uvloop")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    results = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            rate = float(match["rate"].replace(",", ""))
            results[match["name"]] = (rate, float(match["cpu"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--node", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--only", default="cycle,cycle-sync,one-by-one,rpc")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="print every round's figures")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    got: dict[str, dict[str, list[tuple[float, float]]]] = {"before": {}, "after": {}}
    for round_ in range(args.rounds):
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        # One process per scenario: what one leaves behind (the broker deleting a queue of
        # acked messages, say) must not land in the next one's figures.
        for scenario in args.only.split(","):
            for label in order:
                for name, value in run(trees[label], args, scenario).items():
                    got[label].setdefault(name, []).append(value)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'scenario':<26} {'CPU µs/msg before → after':>28} {'rate before → after':>26}")
    for name in got["before"]:
        before, after = got["before"][name], got["after"].get(name, [])
        if not after:
            continue
        cpu_b = statistics.median(v[1] for v in before)
        cpu_a = statistics.median(v[1] for v in after)
        rate_b = statistics.median(v[0] for v in before)
        rate_a = statistics.median(v[0] for v in after)
        print(
            f"{name:<26} {cpu_b:>9.1f} → {cpu_a:>5.1f} ({(cpu_a / cpu_b - 1) * 100:+5.0f}%)"
            f" {rate_b:>9,.0f} → {rate_a:>7,.0f} ({(rate_a / rate_b - 1) * 100:+4.0f}%)"
        )
        if args.verbose:
            print("    CPU before:", " ".join(f"{v[1]:.1f}" for v in before))
            print("    CPU after: ", " ".join(f"{v[1]:.1f}" for v in after))


if __name__ == "__main__":
    main()
