"""What each process of the exit test runs: join the process group as distillery does, then leave a gloo thread
work that calls back into Python after the process has begun to exit.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/exit_worker.py``. Rank 1 joins the sum late, so rank 0
reaches its exit while the sum is in flight; the callback then runs in a gloo thread. If that thread were still
alive while the interpreter shuts down, taking the interpreter's lock there would abort the process with
"terminate called without an active exception" (SIGABRT), as a finished torchrun run once did.
"""
import os
import time

import torch
import torch.distributed as dist

from distillery.engine.distributed import setup_distributed

context = setup_distributed("cpu")
import torch._dynamo  # noqa: E402,F401  what DDP's constructor imports, after the group exists

work = dist.all_reduce(torch.ones(1), async_op=True)
work.get_future().then(lambda future: time.sleep(0.01))  # Python, run by a gloo thread when the sum arrives
if context.rank == 1:
    time.sleep(0.5)
print(f"rank {os.environ['RANK']} exits", flush=True)
