"""Peak resident memory of a call, sampled in this process. Imports nothing but the standard library: the
workers that run in a reference implementation's side environment (without lrpfx) measure with it too."""
from __future__ import annotations

import gc
import resource
import threading
import time


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so the next call's allocations show in RSS."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def rss_growth_during(fn) -> float:
    """Peak resident memory while ``fn`` runs, minus the resident memory just before (MiB), sampled every
    millisecond: unlike ``ru_maxrss`` it does not hide a call under an earlier peak (import, export, build)."""
    gc.collect()
    release_free_memory()
    base = peak = current_rss_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, current_rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, current_rss_mib()) - base
