"""A tqdm progress bar that counts work units (sequences, windows) and shows tokens/s."""
from __future__ import annotations

import sys
import time


class TokenProgress:
    """Callable ``progress(units, tokens)`` for collect_reference / compare / perplexity: advances a
    tqdm bar by ``units`` and shows the token rate (tokens/s) since the start. Use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "seq", disable: bool = False):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)
        self.tokens = 0
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the bar started."""
        return time.perf_counter() - self.t0

    @property
    def tokens_per_s(self) -> float:
        """Tokens processed per second so far."""
        return self.tokens / max(self.elapsed, 1e-9)

    def __call__(self, units: int, tokens: int) -> None:
        self.tokens += int(tokens)
        self.bar.update(int(units))
        self.bar.set_postfix_str(f"{self.tokens_per_s:,.0f} tok/s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
