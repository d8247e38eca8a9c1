"""At most one line of progress per loop.

In a notebook the line is one output that is updated in place (an IPython display handle), so
an executed notebook keeps only its final state ("information_flow_prepend: 26 facts in 8 s");
in a terminal it is one line rewritten with a carriage return; elsewhere (a log file) only the
final line is printed. No progress bars, and no tqdm.auto (which warns "IProgress not found"
in Jupyter without ipywidgets).
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _kernel() -> bool:
    """Whether we run inside a Jupyter kernel (where display handles update in place)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and getattr(shell, "kernel", None) is not None


class _Line:
    """One line of text, shown and then replaced."""

    def __init__(self):
        self.handle = None
        self.live = _kernel()
        self.tty = not self.live and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def show(self, text: str, final: bool = False) -> None:
        if self.live:
            from IPython.display import display

            if self.handle is None:
                self.handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                self.handle.update({"text/plain": text}, raw=True)
        elif self.tty:
            sys.stderr.write("\r" + text.ljust(79) + ("\n" if final else ""))
            sys.stderr.flush()
        elif final:
            print(text)


def progress(items: Iterable[T], desc: str, unit: str = "facts", note: str = "", enabled: bool = True,
             every: float = 1.0) -> Iterator[T]:
    """Iterate over ``items``, showing ``desc: i of n unit`` (updated at most every ``every``
    seconds) and at the end ``desc: n unit in t s`` plus ``note``."""
    items = list(items)
    if not enabled:
        yield from items
        return
    line, start, shown = _Line(), time.perf_counter(), -every
    for i, item in enumerate(items):
        now = time.perf_counter()
        if now - shown >= every:
            line.show(f"{desc}: {i} of {len(items)} {unit} ...")
            shown = now
        yield item
    elapsed = time.perf_counter() - start
    line.show(f"{desc}: {len(items)} {unit} in {elapsed:.0f} s{note}", final=True)


__all__ = ["progress"]
