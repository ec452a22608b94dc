"""Memory of a process tree, for the benchmarks that run a stage as a child process."""

from __future__ import annotations


def tree_memory(proc) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of ``proc`` (a psutil.Process) and its descendants; PSS
    counts shared pages once."""
    import psutil

    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            rss, pss = rss + m.rss, pss + m.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss
