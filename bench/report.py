"""The project's one output form for benchmarks: a table, then one line per goal.

Every bench under bench/ prints its figures as a table (figure, value, limit/reference, ratio) and then,
for each goal it measures, exactly ``goal <name>: met`` or ``goal <name>: missed (<value> vs <limit>)``,
so that `make bench` logs can be read (and grepped) the same way for every bench.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

HEAD = ("figure", "value", "limit/reference", "ratio")
Goal = tuple[str, bool, str, str]  # name, met, value, limit


def goal(name: str, ok: bool, value: str, limit: str) -> str:
    """Print and return the goal line: ``goal <name>: met`` or ``goal <name>: missed (<value> vs <limit>)``."""
    line = f"goal {name}: met" if ok else f"goal {name}: missed ({value} vs {limit})"
    print(line)
    return line


def goals(results: Iterable[Goal]) -> bool:
    """Print one goal line per (name, ok, value, limit); True when every goal is met."""
    met = True
    for name, ok, value, limit in results:
        goal(name, ok, value, limit)
        met = met and ok
    return met


def table(rows: Sequence[Sequence[str]], head: Sequence[str] = HEAD) -> None:
    """Print ``rows`` under ``head`` as left-aligned columns separated by `` | ``, with a rule under the head."""
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print(" | ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
