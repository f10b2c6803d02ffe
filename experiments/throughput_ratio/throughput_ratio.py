"""Training images/s of one config relative to another, on a shared machine (not a test).

    python experiments/throughput_ratio/throughput_ratio.py --config=configs/digits_hires.py \
        --reference=configs/quickstart.py --repeats=5

Runs benchmarks/benchmark.py for the two configs alternately, `--repeats` times each (so both
see the same machine conditions on average), and prints the median train images/s of each, the
ratio of the medians, the ratio within each repeat (the two runs back to back) and their median,
and every measurement. Extra `--config.*` flags go to both configs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def measure(config: str, per_device_batch: int, steps: int, extra: list[str]) -> dict:
    """One benchmark.py run; returns its JSON line."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "benchmark.py"), f"--config={config}",
         f"--per_device_batch={per_device_batch}", f"--steps={steps}",
         "--sample_timed_steps=0", "--plan=false", *extra],  # Training only.
        cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per_device_batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args, extra = parser.parse_known_args()
    rates: dict[str, list[float]] = {args.config: [], args.reference: []}
    for i in range(args.repeats):
        for config in (args.reference, args.config):
            r = measure(config, args.per_device_batch, args.steps, extra)
            rates[config].append(r["train_images_per_s"])
            print(f"repeat {i}: {config}: {r['train_images_per_s']:.1f} images/s "
                  f"({r['step_time_s'] * 1e3:.0f} ms/step)", flush=True)
    medians = {c: statistics.median(v) for c, v in rates.items()}
    ratio = medians[args.config] / medians[args.reference]
    # Each repeat measures the two back to back: its ratio sees one machine state.
    paired = [a / b for a, b in zip(rates[args.config], rates[args.reference], strict=True)]
    print(f"median images/s: {args.config} {medians[args.config]:.1f}, {args.reference} "
          f"{medians[args.reference]:.1f}; ratio of medians {ratio:.3f}; per repeat "
          f"{', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.3f})")
    print(json.dumps({"medians": medians, "ratio": ratio, "paired_ratios": paired,
                      "median_paired_ratio": statistics.median(paired), "all": rates}))


if __name__ == "__main__":
    main()
