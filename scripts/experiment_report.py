"""Rebuild an experiment's results (results.csv, results.md, plots, and the claims or the readings) from the
results.csv files of several runs of the same grid — e.g. a grid run in slices, some methods or seeds per
session — into one folder. The config's ``experiment`` field says which experiment the rows are from.

    python scripts/experiment_report.py --config configs/experiments/failure_modes.py \
        --out runs/failures_all runs/failures_tiny/results.csv runs/failures_minilm/results.csv
    python scripts/experiment_report.py --config configs/experiments/learning_curve.py \
        --out runs/lc_all docs/cells/lc_*.csv

The config names the parts (failure modes) or the methods' order (learning curve); the rows carry everything
else. A cell in two files is an error. What needs the cells' folders is left out: the failure modes' loss
curves (lr_sweep.png's right panel), the learning curve's one-off costs of the starting points.
"""
import argparse
import sys

from tljax import config as config_lib
from tljax import defaults


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the experiment's config file (with :quick if that ran)")
    ap.add_argument("--out", required=True, help="folder for the merged results")
    ap.add_argument("csv", nargs="+", help="results.csv files of the runs")
    args = ap.parse_args(argv)
    try:
        config = config_lib.load_config_file(args.config)
        name = config.get("experiment", defaults.EXPERIMENT)
        if name == "failure_modes":
            from tljax import failures
            readings = failures.report(config, args.csv, args.out)
            for part, lines in readings.items():
                print(f"{part}: " + " ".join(lines))
        elif name == "learning_curve":
            from tljax import experiment
            print(experiment.claims_text(experiment.report(config, args.csv, args.out)))
        else:
            raise config_lib.ConfigError(f"experiment={name!r} unknown; choose one of {', '.join(defaults.EXPERIMENTS)}")
    except (config_lib.ConfigError, FileNotFoundError) as e:
        print(f"experiment_report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/results.csv, results.md and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
