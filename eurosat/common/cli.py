"""What every command-line front shares: an expected error is one line on stderr and exit status 2,
and progress lines on stderr.

The fronts (`compare_quantizations.py`, `measure_compression.py`, `analyze_results.py`,
`create_comparison_plots.py`, the `bench/` scripts) name the errors they expect once, on `main`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

BAD_INPUT = 2


def fail(message: str) -> int:
    """Print `error: message` on stderr; the exit status for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT


def one_line_errors(*kinds: type[BaseException]) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a `main(argv) -> int`: an error of `kinds` it raises becomes `fail(str(error))`."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def guarded(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except kinds as exc:
                return fail(str(exc))

        return guarded

    return wrap


def enable_logging(level: int = logging.INFO) -> None:
    """Show this package's progress lines (round summaries, bytes on the wire) on stderr."""
    logger = logging.getLogger("eurosat")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
