"""Command line: ``python -m mrlib --help`` lists the commands, each has ``--help``.

Every problem with the user's input ends in one line, ``error: <where>: <problem>``, and
a non-zero exit status, never in a traceback from inside a library.

A flag means one thing in every command: ``--run-dir`` a run directory, ``--data`` a data
root (or the folder holding ``singlecoil_*`` / ``multicoil_*``), ``--out`` one output
file, ``--quick`` the CPU-sized variant of a command, ``--preset`` a preset, ``-p`` a
notebook parameter, ``--quiet`` no progress bars.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from . import __version__
from .artifacts import write_json, write_text
from .bench import BenchConfig, format_table, run_bench
from .compare import TIMING_FIELDS, compare_runs
from .config import UnetConfig
from .data.check import check_data_dir
from .data.splits import POLICIES, SELECTION_FRACTION
from .data.manifest import build_manifest
from .data.synth import LAYOUTS, SynthConfig, generate
from .errors import MrlibError, ParameterError
from .evaluate import evaluate_run, infer
from .masking import MaskSpec
from .pipeline import build_book, flat_parameters, preset_parameters, run
from .presets import PRESETS, get_preset
from .rundir import RunDir
from .unet import train_command
from .variants import make_variant, variant_table


def _default_run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / args.preset


def cmd_synth(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    if preset["synth"] is None:
        raise MrlibError("--preset", f"{args.preset!r} is a real-data preset; it has no synthetic cohort")
    seed = args.seed if args.seed is not None else preset["params"].get("seed", 0)  # the preset's own cohort
    summary = generate(args.data, SynthConfig(**preset["synth"]), seed=seed, multicoil=args.multicoil,
                       progress=not args.quiet, layout=args.layout)
    print(f"wrote {args.data}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict)))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    report = check_data_dir(args.data, deep=not args.quick, split_policy=args.split_policy,
                            selection_fraction=args.selection_fraction)
    print(report.format())
    return 0 if report.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    written = run(args.preset, args.data, args.run_dir, args.param, progress=not args.quiet, force=args.force)
    print(f"ran {len(written)} notebooks in {time.perf_counter() - t0:.0f} s; executed copies in "
          f"{written[-1].parent if written else _default_run_dir(args)}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    if not args.no_run:
        cmd_run(args)
    index = build_book(RunDir(_default_run_dir(args)))
    print(f"book: {index}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import yaml  # lazy: PyYAML comes with jupyter-book and papermill, only this command needs it

    params = flat_parameters(preset_parameters(args.preset, args.param))
    params = {k: v for k, v in params.items() if k not in ("run_dir", "data_dir")}
    text = (f"# python -m mrlib params --preset {args.preset}: the notebooks' parameters for papermill -f\n"
            + yaml.safe_dump(params, sort_keys=True, default_flow_style=None))
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    diffs = compare_runs(args.run_a, args.run_b, ignore=(*TIMING_FIELDS, *args.ignore), tolerance=args.tolerance)
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s) between {args.run_a} and {args.run_b}" if diffs
          else f"the runs agree: every JSON and CSV value in {args.run_a} equals {args.run_b}'s (timings aside)")
    return 1 if diffs else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    rd = RunDir(args.run_dir)
    df, summary = evaluate_run(rd, args.variants or None, write=args.out is None, device=args.device,
                               batch_size=args.batch_size, progress=not args.quiet,
                               save_variants=args.save_reconstructions)
    if args.out:
        write_text(args.out, df.to_csv(index=False))
    where = args.out or rd.metrics_csv
    print(f"evaluated {df['variant'].nunique() - 1} variant(s) on {df['volume'].nunique()} volume(s): {where}")
    if args.out is None:
        inferred = infer(rd, args.variants or None, device=args.device, batch_size=args.batch_size,
                         progress=not args.quiet)
        folders = sorted(set(inferred["folder"]))
        if folders:
            print(f"reconstructed {inferred['volume'].nunique()} inference volume(s) into {len(folders)} folder(s) "
                  f"under {rd.root / rd.RECONSTRUCTIONS}")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    table = variant_table()
    for row in table.itertuples(index=False):
        print(f"{row.variant:<12} loss {row.loss:<13} {row.parameters or '-'}\n{'':<12} {row.description}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
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
    cfg = UnetConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(UnetConfig)})
    make_variant(cfg.variant, cfg.identity())  # an unknown variant fails before anything is written
    try:
        if args.data is not None:
            _prepare_run_dir(RunDir(args.run_dir), args.data, args.accelerations, args.center_fractions,
                             args.split_policy)
        result = train_command(cfg, args.run_dir, resume=not args.no_resume, progress=not args.quiet)
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


def _prepare_run_dir(rd: RunDir, data: str, accelerations, center_fractions, split_policy: str) -> None:
    """For ``train --data``: what chapters 1 and 2 would write, if the run directory lacks it
    (rank 0 writes, the others wait for the files)."""
    if rd.manifest_path.is_file():
        made_from = Path(rd.read_manifest()["data_dir"])
        if made_from != Path(data).resolve():
            raise ParameterError("--data", f"{rd.root} was made from {made_from}, not {data}; "
                                 "use another --run-dir, or leave out --data")
    if os.environ.get("RANK", "0") == "0":
        if not rd.manifest_path.is_file():
            rd.write_manifest(build_manifest(data, split_policy=split_policy, needed_roles=("train", "selection")))
        if not rd.masking_path.is_file():
            rd.write_mask_spec(MaskSpec("random", tuple(accelerations), tuple(center_fractions)), seed=0)
    else:
        for _ in range(600):
            if rd.manifest_path.is_file() and rd.masking_path.is_file():
                return
            time.sleep(1)
        raise MrlibError(rd.root, "rank 0 did not write the manifest and masking spec within 10 minutes")


# --------------------------------------------------------------------------- the parser

def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    p.add_argument("--data", default=None, help="data root (real or synthetic); "
                   "default: generate the preset's synthetic cohorts into RUN/data")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a notebook parameter, e.g. -p seed=1 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="delete an earlier run in the run directory (finished or with other parameters) first")


#: Title of the ``train`` option group generated from :class:`UnetConfig`.
UNET_GROUP = "U-Net run (the fields of mrlib.config.UnetConfig)"


def add_config_options(group, config_cls) -> None:
    """One option per field of a configuration dataclass, with its type, default and help."""
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=help_text)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one U-Net run (as notebook 05); under torchrun, on several GPUs",
                       description="Train one U-Net run as notebook 05 does, into a run directory, so the "
                       "notebook and the command resume and extend each other's runs. Alone: "
                       "python -m mrlib train --run-dir RUN --variant oracle. On N GPUs: "
                       "torchrun --nproc_per_node=N -m mrlib train ... (DDP; --unet-batch-size is per process).")
    where = p.add_argument_group("where")
    where.add_argument("--run-dir", required=True, help="run directory: where notebooks 01, 02 (and 04) ran, "
                       "or, with --data, a new one")
    where.add_argument("--data", default=None, help="data root (fastmri/singlecoil_{train,val}); the run "
                       "directory's manifest and masking spec are made from it if missing")
    data = p.add_argument_group("the data's splits and masking, with --data only")
    data.add_argument("--split-policy", choices=POLICIES, default="synthetic",
                      help="which volumes train and which select checkpoints (default: synthetic; fastmri for the "
                           "real splits, as the notebooks' split_policy)")
    data.add_argument("--accelerations", type=int, nargs="+", default=[4, 8], help="accelerations (default: 4 8)")
    data.add_argument("--center-fractions", type=float, nargs="+", default=[0.08, 0.04],
                      help="centre fractions (default: 0.08 0.04)")
    add_config_options(p.add_argument_group(UNET_GROUP), UnetConfig)
    other = p.add_argument_group("other")
    other.add_argument("--no-resume", action="store_true", help="start afresh instead of continuing from the "
                       "last checkpoint")
    other.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_bench(sub) -> None:
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
    p.add_argument("--data", default=None, help="data root to read (fastmri/singlecoil_train) or to cache "
                   "the synthetic data in; nothing in it is deleted (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrlib",
        description="Knee-MRI reconstruction book: synthetic data, checks, the notebook runner and the book.",
    )
    parser.add_argument("--version", action="version", version=f"mrlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the synthetic knee cohorts in the real file formats")
    p.add_argument("--preset", default="default",
                   help=f"geometry and size: {', '.join(k for k, v in PRESETS.items() if v['synth'])} (default: default)")
    p.add_argument("--data", required=True, type=Path, help="data root to write (fastmri/, annotations/, kneemri/)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the preset's cohort seed, 1 for default, 0 for the others)")
    p.add_argument("--multicoil", action="store_true", help="write multi-coil fastMRI files instead of single-coil")
    p.add_argument("--layout", choices=LAYOUTS, default="synthetic",
                   help="synthetic (every split with targets) or real: exactly as the real downloads are laid out "
                        "(mixed k-space widths, a test split without targets, fastMRI+'s quirks; run it with "
                        "--preset fastmri)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("check-data", help="validate a data directory and report what it holds and what is wrong",
                       description="Validate a data directory: list what it holds, each split's count beside the "
                                   "real download's (a warning, not an error, when a split holds fewer) and every "
                                   "problem with its file. Exit status 1 if there is a problem.")
    p.add_argument("data", type=Path, metavar="DATA", help="data root (fastmri/, annotations/, kneemri/, MRNet-v1.0/)")
    p.add_argument("--quick", action="store_true", help="skip reading every k-space value (NaN/Inf check)")
    p.add_argument("--split-policy", choices=POLICIES, default=None,
                   help="also report what a run with this split policy would refuse (the notebooks' split_policy; "
                        "default: report which policies can use the data)")
    p.add_argument("--selection-fraction", type=float, default=SELECTION_FRACTION,
                   help="share of training patients the fastmri policy keeps for checkpoint selection "
                        "(the notebooks' selection_fraction)")
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill, into a run directory")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("book", help="run the notebooks, then build the run's Jupyter Book and print where it is")
    _add_run_args(p)
    p.add_argument("--no-run", action="store_true", help="build from the run directory's executed notebooks")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("params", help="print a preset's notebook parameters as YAML, for papermill -f")
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter, e.g. -p seed=1 (repeatable)")
    p.add_argument("--out", default=None, help="write the YAML to this file instead of printing it")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("evaluate", help="score the trained U-Nets of a run directory (as notebook 06)")
    p.add_argument("run_dir", metavar="RUN", help="run directory where notebooks 01-05 ran")
    p.add_argument("--variants", nargs="+", default=None, help="variant keys to evaluate (default: all trained)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--out", default=None, help="write the metrics CSV to this file instead of the run directory "
                                               "(and write no reconstructions)")
    p.add_argument("--save-reconstructions", nargs="*", default=["unweighted", "gradcam"], metavar="VARIANT",
                   help="variants whose first-seed evaluation reconstructions are written in fastMRI's layout under "
                        "RUN/reconstructions/ (default: unweighted gradcam, when trained; inference-only volumes "
                        "are always written for every variant)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="compare the JSON/CSV results of two run directories (exit 1 if they differ)")
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="first run directory")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="second run directory")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="numbers within this relative/absolute tolerance are equal (default 0: exactly equal)")
    p.add_argument("--ignore", action="append", default=[], metavar="FIELD",
                   help="also skip this JSON key / CSV column (shell pattern; timing fields are always skipped)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("variants", help="list the U-Net loss variants, their parameters and what they do")
    p.set_defaults(func=cmd_variants)
    _add_bench(sub)
    _add_train(sub)
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
