"""How long generating a preset's synthetic data takes, on all available cores.

Run: ``python benchmarks/bench_synth.py [--preset default|full] [--multicoil]``. Targets:
``default`` under a minute, ``full`` (fastMRI geometry; its chapter 1 also reads the files
back and checks them) under 3 minutes, on 2 cores. The figures are printed, not asserted;
the book's speed chapter gives the measured ones.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from mrlib.data.synth import SynthConfig, generate
from mrlib.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--multicoil", action="store_true")
    args = parser.parse_args()
    cfg = SynthConfig(**get_preset(args.preset)["synth"])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = generate(out, cfg, seed=0, multicoil=args.multicoil, progress=False)
        seconds = time.perf_counter() - t0
    print(f"preset {args.preset} ({'multi' if args.multicoil else 'single'}-coil): "
          f"{sum(summary['counts'].values())} fastMRI volumes of {cfg.n_slices} x "
          f"{cfg.image_size}^2, {summary['n_boxes']} boxes, {cfg.kneemri_exams} kneeMRI exams "
          f"in {seconds:.1f} s")
    print(f"lesions {summary['lesions']}, kneeMRI labels {summary['kneemri_labels']}")


if __name__ == "__main__":
    main()
