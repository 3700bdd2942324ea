"""Benchmark scripts (each runs as ``python -m experiments.benchmarks.NAME``) and what they share."""


def shared_cores(load_start: float, load_end: float, cpus: int) -> bool:
    """Whether other jobs loaded the machine during a run, from the 1-min load averages at
    its start and end (the run itself adds up to one core's worth)."""
    return load_start > cpus or load_end > cpus + 1


def load_sentence(load_start: float, load_end: float, cpus: int) -> str:
    """'1-min load average A at start, B at end' plus a warning when the cores were shared."""
    return (f"1-min load average {load_start:.1f} at start, {load_end:.1f} at end"
            + (" (other jobs shared the cores: the seconds are inflated and noisy, compare the ratios)."
               if shared_cores(load_start, load_end, cpus) else "."))


def write_results(out: str, markdown: str, record: dict) -> None:
    """Writes ``markdown`` to ``out`` and ``record`` as JSON beside it (``out`` with ``.json``)."""
    import json
    import os

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(markdown)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)
