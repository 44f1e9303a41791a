"""Rebuild the failure-modes results (results.csv, results.md, plots, readings) from the results.csv files of
several runs of the same grid — e.g. a grid run in slices, some variants per session — into one folder.

    python scripts/failures_report.py --config configs/experiments/failure_modes.py \
        --out runs/failures_all runs/failures_tiny/results.csv runs/failures_minilm/results.csv

The config names the parts and the collapse threshold; the rows carry everything else. A cell in two files
is an error. Loss curves (lr_sweep.png's right panel) need the cells' folders and are left out here.
"""
import argparse
import sys

from tljax import config as config_lib
from tljax import failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the experiment's config file (with :quick if that ran)")
    ap.add_argument("--out", required=True, help="folder for the merged results")
    ap.add_argument("csv", nargs="+", help="results.csv files of the runs")
    args = ap.parse_args(argv)
    try:
        config = config_lib.load_config_file(args.config)
        readings = failures.report(config, args.csv, args.out)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        print(f"failures_report: {e}", file=sys.stderr)
        return 2
    for part, lines in readings.items():
        print(f"{part}: " + " ".join(lines))
    print(f"wrote {args.out}/results.csv, results.md, readings.json and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
