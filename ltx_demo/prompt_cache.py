"""The contexts of recently encoded texts, kept on the host: a text asked again (the default negative prompt on
nearly every request, a prompt rerun with another seed) skips Gemma and the embeddings processor, and in cold-start
and host-cached residency their builds too. A context comes back bit for bit as its encode made it, on the device
and in the dtype it was made in (both are in the key), so the video does not change."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from ltx_demo.types import PROMPT_CACHE_ENTRIES


@dataclass(frozen=True, slots=True)
class TextContexts:
    """One text's output of the embeddings processor: what the video and the audio streams attend to."""

    video: torch.Tensor
    audio: torch.Tensor | None

    def to(self, device: torch.device) -> TextContexts:
        """A copy on `device` (a copy on the same device too: the flow must not write into what is kept)."""

        def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, copy=True)

        return TextContexts(moved(self.video), moved(self.audio))


class PromptCache:
    """Least recently used TextContexts by (text, what encoded it); `entries` 0 keeps nothing."""

    def __init__(self, entries: int = PROMPT_CACHE_ENTRIES) -> None:
        if entries < 0:
            raise ValueError(f"a prompt cache holds 0 or more texts, not {entries}")
        self.entries = entries
        self._kept: OrderedDict[tuple[str, Hashable], TextContexts] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, encoder: Hashable, device: torch.device) -> TextContexts | None:
        """The text's contexts as `encoder` made them, copied to `device`, or None."""
        with self._lock:
            kept = self._kept.get((text, encoder))
            if kept is not None:
                self._kept.move_to_end((text, encoder))
        return None if kept is None else kept.to(device)

    def put(self, text: str, encoder: Hashable, contexts: TextContexts) -> None:
        """Keep a host copy, dropping the least recently used text beyond `entries`."""
        if self.entries == 0:
            return
        kept = contexts.to(torch.device("cpu"))
        with self._lock:
            self._kept[(text, encoder)] = kept
            self._kept.move_to_end((text, encoder))
            while len(self._kept) > self.entries:
                self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)
