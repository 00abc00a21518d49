"""The run registry is merged under a file lock: runs registered at the same time by
several processes (a notebook and a command, two commands) are all kept."""

from __future__ import annotations

import multiprocessing as mp

from mrlib.rundir import RunDir


def _register(root: str, variant: str, n: int) -> None:
    rd = RunDir(root)
    for seed in range(n):
        rd.register_run({"variant": variant, "seed": seed, "note": "first"})


def test_concurrent_registrations_are_all_kept(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register, args=(str(tmp_path), f"v{i}", 15)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = RunDir(tmp_path).read_registry()
    assert sorted((r["variant"], r["seed"]) for r in runs) == sorted((f"v{i}", s) for i in range(4) for s in range(15))


def test_registering_a_run_again_replaces_it_in_place(tmp_path):
    rd = RunDir(tmp_path)
    rd.register_run({"variant": "a", "seed": 0, "epochs": 1})
    rd.register_run({"variant": "b", "seed": 0, "epochs": 1})
    rd.register_run({"variant": "a", "seed": 0, "epochs": 3})
    assert rd.read_registry() == [{"variant": "a", "seed": 0, "epochs": 3}, {"variant": "b", "seed": 0, "epochs": 1}]
