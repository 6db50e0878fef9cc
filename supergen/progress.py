"""Progress reporting: the executor announces stages and units of work; front-ends draw them."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


class TqdmProgress:
    """One bar per stage; refinement bars count tiles done / total."""

    def __init__(self, **tqdm_kwargs):
        self._kw, self._bar = tqdm_kwargs, None

    def start(self, stage: str, total: int) -> None:
        from tqdm.auto import tqdm

        self.finish()
        self._bar = tqdm(total=total, desc=stage, unit="tile" if stage.startswith("refine") else "stage",
                         leave=True, **self._kw)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()
            self._bar = None
