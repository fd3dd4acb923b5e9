"""A progress bar for long commands (tqdm), on stderr and only when stderr is a terminal,
so piped output, --json and tests never see it."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def step_progress(total: int, description: str) -> Iterator[Callable[[object], None]]:
    """Yield a callback to call once per finished step."""
    if not sys.stderr.isatty():
        yield lambda _record: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="step", leave=False, file=sys.stderr,
              mininterval=0.2) as bar:
        yield lambda _record: bar.update()
