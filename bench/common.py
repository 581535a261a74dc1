"""What every benchmark shares: peak memory, one measured call, the worker processes' set-up, JSON output.

The one timing primitive is the trainers' `timed` (minirl/run.py): a benchmark times what the trainer
times, the same way (perf_counter, the CUDA queue drained at both ends).
"""

import contextlib
import ctypes
import gc
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import torch

from minirl.run import timed


class PeakMemory:
    """Peak memory while the block runs, in bytes.

    CUDA: torch's max_memory_allocated (reset on entry). CPU: tracemalloc cannot see torch's
    allocations, and resource's ru_maxrss is a process-lifetime peak that never goes down, so a
    thread polls the resident set size (/proc/self/statm, Linux) every millisecond and we report
    the peak *above the level at entry*: what the block itself added. Freed heap memory is handed
    back to the OS first (glibc malloc_trim), or the block would reuse it unseen.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.is_set():
            self._max = max(self._max, self.rss())
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            ctypes.CDLL(None).malloc_trim(0)
            self._base = self._max = self.rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self.rss()) - self._base


def measure(fn, device: torch.device) -> tuple:
    """(fn(), wall seconds, CPU seconds, peak bytes) of one call. CPU seconds are this process's, all
    threads: unlike wall time they do not grow while other processes hold the cores."""
    seconds = {}
    with PeakMemory(device) as mem:
        cpu = time.process_time()
        with timed(seconds, "wall"):
            result = fn()
        cpu = time.process_time() - cpu
    return result, seconds["wall"], cpu, mem.peak


@contextlib.contextmanager
def worker_threads(n: int = 1):
    """OMP_NUM_THREADS=n for the worker processes started inside the block (a fresh process's torch reads
    it at import; a fork server keeps the value it started with), restored afterwards."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def join_world(rank: int, world: int, port: int, threads: int = 1):
    """In a worker process: torch's CPU threads, and the env:// variables `sp.init_distributed` reads."""
    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def free_port() -> int:
    """A port nobody listens on now, for a multi-process run's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path, figures: dict):
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")


def longest_within(rows, budget_mb: float) -> float:
    """Longest length whose saved activations fit `budget_mb`, from a least-squares line through the
    measured (length, MB) points: activations are linear in length (flash attention, no L x L)."""
    xs, ys = [r["length"] for r in rows], [r["saved_mb"] for r in rows]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = covariance / sum((x - mean_x) ** 2 for x in xs)
    return (budget_mb - (mean_y - slope * mean_x)) / slope
