"""One cached copy per model: what the AR loader and the decoder loaders share.

Re-running a graph must not reload 18 GB of AR model or 14 GB of decoder, and
asking for the same folder with other options (dtype, device, fp8, ComfyUI or
not) must not hold two copies: the old one is dropped, and released, before the
new one loads.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """name -> (options, loaded object). `lock` guards the table only: loading runs outside it."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple, T]] = {}
        self.lock = threading.RLock()

    def get_or_load(self, name: Hashable, options: tuple, load: Callable[[], T],
                    release: Callable[[T], None] = lambda old: None, free: Callable[[], None] | None = None) -> T:
        """The cached object when `options` match; else drop the other copy (`release` it, then `free()` once
        nothing here holds it) and `load()` anew."""
        with self.lock:
            cached = self._entries.get(name)
            if cached is not None and cached[0] == options:
                return cached[1]
            replaced = self._entries.pop(name, None)  # drop the other copy before loading a new one
        if replaced is not None:
            release(replaced[1])
            del replaced
            if free is not None:
                free()
        loaded = load()
        with self.lock:
            self._entries[name] = (options, loaded)
        return loaded

    def values(self) -> list[T]:
        with self.lock:
            return [entry[1] for entry in self._entries.values()]

    def clear(self, release: Callable[[T], None] = lambda old: None) -> None:
        with self.lock:
            for _, loaded in list(self._entries.values()):
                release(loaded)
            self._entries.clear()
