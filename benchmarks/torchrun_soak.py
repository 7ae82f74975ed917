"""Repeat the two-process torchrun launches of the tests and count the ones that end badly.

The launches are those of tests/test_distributed.py (tests/distributed_worker.py: the Python API, then
``distillery distill``) and tests/test_distributed_resume.py (an uninterrupted ``distillery train``, one
stopped by SIGTERM, one broken by a SIGKILLed process, and the resume). A launch fails when it exits
otherwise than its test expects, or when any process aborts (``terminate called``, SIGABRT, a core).

    OMP_NUM_THREADS=1 python benchmarks/torchrun_soak.py --repeat 30            # a quiet machine
    OMP_NUM_THREADS=1 python benchmarks/torchrun_soak.py --repeat 30 --load     # one CPU-bound process beside

Prints one line per round and a summary; the stderr of every failed launch is kept in ``--out``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))

from cli_helpers import run_config, write_yaml  # noqa: E402
from test_distributed_resume import torchrun, two_process_config  # noqa: E402

ABORTS = ("terminate called", "SIGABRT", "Signal 6", "core dumped")


def burn(seconds: float) -> None:
    """A CPU-bound loop: the other job on a busy machine."""
    deadline = time.monotonic() + seconds
    value = 0
    while time.monotonic() < deadline:
        value = (value * 1103515245 + 12345) % 2**31


def distill_config(directory: Path) -> Path:
    """tests/test_distributed.py's fixture: a teacher trained once, then the Hinton run's config."""
    teacher = directory / "teacher"
    completed = subprocess.run([sys.executable, "-m", "distillery", "train", write_yaml(directory / "teacher.yaml", run_config(
        teacher, train={"epochs": 3, "batch_size": 64, "lr": 0.003}, data={"val_fraction": 0.15}))],
        capture_output=True, text=True, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr
    return write_yaml(directory / "distill.yaml", run_config(
        directory / "single", model={"name": "mlp", "hidden": [16]}, data={"val_fraction": 0.15},
        train={"epochs": 3, "batch_size": 64, "lr": 0.003},
        distill={"teacher": str(teacher), "method": "hinton", "temperature": 2.0}))


def worker_launch(directory: Path, config: Path):
    """The launch of tests/test_distributed.py's ``two_processes`` fixture."""
    output_dir = directory / "parallel"
    output_dir.mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environment.update(OMP_NUM_THREADS="1", DISTILLERY_CACHE=str(output_dir / "cache"),
                       PYTHONPATH=os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "tests")]))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPOSITORY / "tests" / "distributed_worker.py"), str(output_dir), str(config)],
        env=environment, capture_output=True, text=True, timeout=240)


def resume_launches(directory: Path):
    """tests/test_distributed_resume.py's four launches: (name, completed, whether it ended as expected)."""
    reference = torchrun("train", two_process_config(directory / "reference"))
    yield "reference", reference, reference.returncode == 0
    interrupted_dir = directory / "interrupted"
    at = 21 + 9
    stopped = torchrun("train", two_process_config(interrupted_dir),
                       DISTILLERY_TEST_SIGNAL_AT=f"{at}:SIGTERM:1,{at + 1}:SIGTERM:0")
    yield "sigterm", stopped, stopped.stderr.count("exitcode  : 143") == 2
    killed = torchrun("train", "--resume", interrupted_dir / "run", DISTILLERY_TEST_SIGNAL_AT="8:SIGKILL:1")
    yield "sigkill", killed, killed.returncode != 0 and "SIGKILL" in killed.stderr
    resumed = torchrun("train", "--resume", interrupted_dir / "run")
    yield "resume", resumed, resumed.returncode == 0


def one_round(directory: Path, config: Path):
    worker = worker_launch(directory, config)
    yield "worker", worker, worker.returncode == 0
    for sub in ("reference", "interrupted"):
        (directory / sub).mkdir()
    yield from resume_launches(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--load", action="store_true", help="run one CPU-bound process beside the launches")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "bench-out" / "torchrun-soak")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    burner = None
    if options.load:
        burner = multiprocessing.Process(target=burn, args=(24 * 3600,), daemon=True)
        burner.start()
    started, failures, launches = time.monotonic(), [], 0
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config = distill_config(Path(scratch))
            for round_number in range(1, options.repeat + 1):
                directory = Path(scratch) / f"round{round_number}"
                directory.mkdir()
                line = []
                for name, completed, expected in one_round(directory, config):
                    launches += 1
                    aborted = any(marker in completed.stderr for marker in ABORTS)
                    if aborted or not expected:
                        failures.append(f"round {round_number} {name}")
                        (options.out / f"round{round_number}-{name}.stderr").write_text(completed.stderr)
                    line.append(f"{name} {'ABORT' if aborted else 'ok' if expected else 'FAIL'}")
                print(f"round {round_number}/{options.repeat}: {', '.join(line)} "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        if burner is not None:
            burner.terminate()
    print(f"{launches} launches, {len(failures)} failed, {time.monotonic() - started:.0f} s "
          f"({'with' if options.load else 'without'} a CPU-bound process beside)")
    for failure in failures:
        print(f"  failed: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
