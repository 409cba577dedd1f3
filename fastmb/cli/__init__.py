"""The ``fastmb`` command line: ``fastmb simulate`` and ``fastmb bench`` (also
``python -m fastmb``)."""

from __future__ import annotations

import argparse
import json
import sys

from . import bench
from .simulate import add_arguments, run


def _positive(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="fastmb",
                                     description="fast micro-batch learning at the edge")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate = sub.add_parser(
        "simulate", help="simulate edge clients training and a server aggregating",
        description="Simulate federated training: clients train on their own micro-batches, "
        "a server aggregates. With no arguments: scikit-learn's digits, 100 clients with "
        "Dirichlet(0.5) label skew, an MLP 64-64-10, FedAvg, 30 rounds. Writes the history "
        "(CSV and JSON), a summary, a plot and a checkpoint to --out.")
    add_arguments(simulate)
    bench = sub.add_parser("bench", help="time the core kernels beside their peers",
                           description="Time fastmb's core kernels beside NumPy, scikit-learn, "
                           "PyTorch and Flower (those installed), on the issue's sizes, and "
                           "print each ratio and the fraction of the memory-bandwidth limit.")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (under a minute "
                       "once the kernels are compiled)")
    bench.add_argument("--compile", action="store_true", help="also measure cold compile time "
                       "and warm start-up in fresh processes")
    bench.add_argument("--scale", type=_positive, default=1.0, help="multiply the data sizes "
                       "(default 1: n=200,000 rows, P=1,000,000 parameters)")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.add_argument("--markdown", metavar="PATH", help="also write the rows as a Markdown "
                       "table headed by the machine (the README's table)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate":
        try:
            return run(args, echo=lambda line: print(line, flush=True))
        except (ValueError, TypeError, OSError, ImportError) as exc:
            print(f"fastmb simulate: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("fastmb simulate: interrupted; the checkpoint holds the last finished round "
                  "(run again with --resume to continue)", file=sys.stderr)
            return 130
    if args.command == "bench":
        machine = bench.machine()
        print(f"fastmb bench on {machine}", flush=True)
        rows, extra = bench.run(quick=args.quick, compile=args.compile, scale=args.scale,
                                echo=lambda line: print(line, flush=True))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"rows": rows, "machine": machine, **extra}, fh, indent=2)
        if args.markdown:
            with open(args.markdown, "w") as fh:
                fh.write(bench.markdown(rows, extra, machine))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
