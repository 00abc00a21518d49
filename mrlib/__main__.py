"""Command line: ``python -m mrlib --help`` lists the commands, each has ``--help``.

Every problem with the user's input ends in one line, ``error: <where>: <problem>``, and
a non-zero exit status, never in a traceback from inside a library.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import MrlibError
from .presets import PRESETS


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    p.add_argument("--data", default=None, help="data directory (real or synthetic); "
                   "default: generate the preset's synthetic cohorts into RUN/data")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a notebook parameter, e.g. -p seed=1 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="delete an earlier run in the run directory (finished or with other parameters) first")


def cmd_synth(args: argparse.Namespace) -> int:
    from .presets import get_preset

    synth = get_preset(args.preset)["synth"]
    if synth is None:
        raise MrlibError("--preset", f"{args.preset!r} is a real-data preset; it has no synthetic cohort")
    from .data.synth import SynthConfig, generate

    summary = generate(args.out, SynthConfig(**synth), seed=args.seed, multicoil=args.multicoil,
                       progress=not args.quiet)
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict)))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.check import check_data_dir

    report = check_data_dir(args.dir, deep=not args.quick)
    print(report.format())
    return 0 if report.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    t0 = time.perf_counter()
    written = run(args.preset, args.data, args.run_dir, args.param, progress=not args.quiet, force=args.force)
    print(f"ran {len(written)} notebooks in {time.perf_counter() - t0:.0f} s; executed copies in "
          f"{written[-1].parent if written else 'book/notebooks'}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .pipeline import build_book, run

    if not args.no_run:
        cmd_run(args)
    index = build_book()
    print(f"book: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrlib",
        description="Knee-MRI reconstruction book: synthetic data, checks, the notebook runner and the book.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the synthetic knee cohorts in the real file formats")
    p.add_argument("--preset", default="default", help=f"geometry and size: {', '.join(k for k, v in PRESETS.items() if v['synth'])}")
    p.add_argument("--out", required=True, type=Path, help="output data directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--multicoil", action="store_true", help="write multi-coil fastMRI files instead of single-coil")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("check-data", help="validate a data directory and report what it holds and what is wrong")
    p.add_argument("dir", type=Path, help="data directory (fastmri/, annotations/, kneemri/, MRNet-v1.0/)")
    p.add_argument("--quick", action="store_true", help="skip reading every k-space value (NaN/Inf check)")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("book", help="run the notebooks, then build the Jupyter Book and print where it is")
    _add_run_args(p)
    p.add_argument("--no-run", action="store_true", help="build from the executed notebooks already in book/")
    p.set_defaults(func=cmd_book)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MrlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
