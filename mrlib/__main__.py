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


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import TIMING_FIELDS, compare_runs

    diffs = compare_runs(args.run_a, args.run_b, ignore=(*TIMING_FIELDS, *args.ignore), tolerance=args.tolerance)
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s) between {args.run_a} and {args.run_b}" if diffs
          else f"the runs agree: every JSON and CSV value in {args.run_a} equals {args.run_b}'s (timings aside)")
    return 1 if diffs else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .artifacts import write_json
    from .bench import BenchConfig, format_table, run_bench

    kw = {k: v for k, v in dict(
        image_size=args.image_size, n_volumes=args.volumes, n_slices=args.slices, batch_size=args.batch_size,
        workers=args.workers, epochs=args.epochs, train_steps=args.steps, device=args.device,
        compile=args.compile, data=args.data, seed=args.seed,
        sections=tuple(s.strip() for s in args.only.split(",")) if args.only else None,
    ).items() if v is not None}
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    results = run_bench(cfg, progress=not args.quiet)
    print(format_table(results))
    if args.out:
        write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from .distributed import train_command

    try:
        result = _train(args, train_command)
    except MrlibError as exc:
        if os.environ.get("RANK", "0") != "0":  # under torchrun every rank fails alike; rank 0 says why
            return exc.exit_code
        raise
    if result["is_main"]:
        last = result["history"][-1] if result["history"] else {}
        print(f"trained {result['variant']} (seed {result['seed']}) on {result['world_size']} process(es), "
              f"{result['device']}: {len(result['history'])} epochs, "
              f"val MSE {last.get('val_mse', float('nan')):.5g}; checkpoints in {result['out_dir']}")
    return 0


def _train(args: argparse.Namespace, train_command) -> dict:
    return train_command(
        run_dir=args.run_dir, data=args.data, out=args.out, variant=args.variant, seed=args.seed,
        model=args.model, chans=args.chans, pools=args.pools, epochs=args.epochs, lr=args.lr,
        optimizer=args.optimizer, lr_step=args.lr_step, batch_size=args.batch_size, weight_rule=args.weight_rule,
        alpha=args.alpha, threshold=args.threshold, cam_method=args.cam_method,
        accelerations=args.accelerations, center_fractions=args.center_fractions, device=args.device,
        storage=args.storage, resume=not args.no_resume, progress=not args.quiet,
    )


def _add_speed_commands(sub) -> None:
    """The ``bench`` and ``train`` subcommands (speed and scale)."""
    p = sub.add_parser("bench", help="time mrlib's data path, training and inference against fastMRI's",
                       description="Benchmark mrlib's device-resident data path against fastMRI's "
                       "SliceDataset + UnetDataTransform + DataLoader on the same synthetic data.")
    p.add_argument("--quick", action="store_true", help="CPU size: images 128 x 128, 6 training steps")
    p.add_argument("--image-size", type=int, default=None, help="target size N (k-space 2N x 1.15N; default 320)")
    p.add_argument("--volumes", type=int, default=None, help="volumes in the split (default 3)")
    p.add_argument("--slices", type=int, default=None, help="slices per volume (default 35)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per batch (default 8)")
    p.add_argument("--workers", type=int, default=None, help="fastMRI DataLoader workers (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="data-path epochs timed (default 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps timed per path (default 10)")
    p.add_argument("--only", default=None, help="comma-separated sections: data, train, inference")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile mrlib's training model")
    p.add_argument("--data", default=None, help="cache directory for the synthetic data (or a data directory "
                   "with fastmri/singlecoil_train); default: a temporary directory")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train one U-Net variant (as notebook 05); under torchrun, on several GPUs",
                       description="Train one U-Net loss variant as notebook 05 does. Alone: "
                       "python -m mrlib train --run-dir RUN --variant unweighted. On N GPUs: "
                       "torchrun --nproc_per_node=N -m mrlib train ... (DDP; --batch-size is per process).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", default=None, help="a run directory where notebooks 01, 02 (and 04) ran")
    src.add_argument("--data", default=None, help="a data directory (fastmri/singlecoil_{train,val})")
    p.add_argument("--out", default=None, help="checkpoint directory (default RUN/unet/VARIANT/seedN)")
    p.add_argument("--variant", default="unweighted", help="unweighted, gradcam, oracle, random or l1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="unet", help="unet (fastMRI's) or seed (the report's)")
    p.add_argument("--chans", type=int, default=16)
    p.add_argument("--pools", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", help="adam or rmsprop")
    p.add_argument("--lr-step", type=int, default=0, help="divide the lr by 10 every N epochs (0: never)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per step and process")
    p.add_argument("--weight-rule", default="linear")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--cam-method", default="gradcam")
    p.add_argument("--accelerations", type=int, nargs="+", default=[4, 8], help="with --data: accelerations")
    p.add_argument("--center-fractions", type=float, nargs="+", default=[0.08, 0.04],
                   help="with --data: centre fractions")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--storage", default="auto", help="auto, device, host (pinned) or stream")
    p.add_argument("--no-resume", action="store_true", help="start afresh instead of continuing from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


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

    p = sub.add_parser("compare", help="compare the JSON/CSV results of two run directories (exit 1 if they differ)")
    p.add_argument("run_a", type=Path, help="first run directory")
    p.add_argument("run_b", type=Path, help="second run directory")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="numbers within this relative/absolute tolerance are equal (default 0: exactly equal)")
    p.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                   help="also skip this JSON key / CSV column (shell pattern; timing fields are always skipped)")
    p.set_defaults(func=cmd_compare)
    _add_speed_commands(sub)
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
