"""Turning generated token ids into streamed text: whole characters only, and never a stop sequence.

Two stages, per sequence:

- ``IncrementalDetokenizer`` decodes tokens as they come, the way TGI and vLLM do: it decodes a short
  window of recent ids twice (without and with the new ones) and emits the difference. A byte-level
  tokenizer splits a multi-byte character over several tokens; while the window's text ends in an
  incomplete character (decoded as U+FFFD) nothing is emitted, so a client never sees half a character.
  The window starts on the last prompt tokens, so that the first output token decodes in context (a
  SentencePiece tokenizer drops a word's leading space when it decodes it alone).
- ``StopMatcher`` holds back text that could be the start of a stop sequence until it is known not to
  be, and ends the text just before the first stop sequence found (the stop text is not output).

Neither imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Text deltas for token ids pushed one at a time; their concatenation is the output text."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._prefix = 0  # the window starts here
        self._read = len(self._ids)  # text up to here has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """The new text that ``token_id`` completes ("" while a character is incomplete)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end: the text still held back, less an incomplete character at the very end."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if final:
            after = after.rstrip(REPLACEMENT_CHAR)
        elif after.endswith(REPLACEMENT_CHAR):
            return ""
        if len(after) <= len(before):  # nothing new yet (a special token, skipped)
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level BPE alphabet (GPT-2's ``bytes_to_unicode``): char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, shifted = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_TABLES: dict[int, list[bytes]] = {}  # id(tokenizer) -> bytes of each token id


def byte_table(tokenizer: Any) -> list[bytes] | None:
    """The bytes each token id stands for, when ``tokenizer`` is byte-level BPE (Llama 3, GPT-2 and
    kin); special tokens stand for nothing, as with ``skip_special_tokens``. None for other tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    table = _TABLES.get(id(tokenizer))
    if table is None:
        inverse = _byte_decoder()
        added = getattr(tokenizer, "added_tokens_decoder", {})
        table = []
        for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(range(len(tokenizer)))):
            if token_id in added:
                table.append(b"" if added[token_id].special else added[token_id].content.encode())
            else:
                table.append(bytes(inverse[c] for c in token if c in inverse))
        _TABLES[id(tokenizer)] = table
    return table


class ByteLevelDetokenizer:
    """``IncrementalDetokenizer`` for byte-level tokenizers, in O(1) per token: each id's bytes go
    through an incremental UTF-8 decoder, which holds back a character until its last byte arrives.
    The same text as ``tokenizer.decode(ids, skip_special_tokens=True)``, without decoding twice a token."""

    def __init__(self, table: list[bytes]) -> None:
        import codecs

        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._table[token_id] if 0 <= token_id < len(self._table) else b"")

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True).rstrip(REPLACEMENT_CHAR)


def make_detokenizer(tokenizer: Any, prompt_ids: Sequence[int] = ()) -> Any:
    """The fastest exact detokenizer for ``tokenizer``."""
    table = byte_table(tokenizer)
    if table is not None:
        return ByteLevelDetokenizer(table)
    return IncrementalDetokenizer(tokenizer, prompt_ids)


class StopMatcher:
    """Cuts streamed text at the first of ``stop_sequences``, holding back a possible start of one."""

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        self._stops = [s for s in stop_sequences if s]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text that can be emitted now. After a stop sequence is found, ``stopped`` is true and the
        text up to it is all that is returned."""
        if self.stopped or not text:
            return ""
        if not self._stops:
            return text
        buffer = self._pending + text
        # Everything emitted so far ended with no possible start of a stop sequence, so a match lies
        # wholly inside the buffer.
        found = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._pending = ""
            return buffer[:min(found)]
        keep = self._held_back(buffer)
        self._pending = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """At the end (EOS or length): the held-back text, which turned out not to be a stop sequence."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending

    def _held_back(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop sequence."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
