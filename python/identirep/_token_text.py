"""Token ids as text, from a model's ``labels`` (its vocabulary strings): GPT-2 style
byte-level vocabularies decoded to their bytes, SentencePiece's '▁' as a space."""
from __future__ import annotations

from typing import Dict


def _byte_level_alphabet() -> Dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte (printable
    bytes themselves, the others shifted past 255: a space is 'Ġ', a newline 'Ċ')."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTES = _byte_level_alphabet()


class TokenText:
    """Token strings from a model's ``labels``, readable: a byte-level vocabulary (GPT-2
    style, some label holds 'Ġ' and at least half of them only characters of the byte-level
    alphabet) is decoded to its bytes and those as UTF-8 ('Ġthe' is ' the'; labels outside
    the alphabet, e.g. added tokens, as given); a SentencePiece-style vocabulary (some label
    starts with '▁', none holds 'Ġ') shows '▁' as a space; other labels as given; no labels:
    ids as '<17>'. ``how`` says which."""

    def __init__(self, labels):
        self.labels = None if labels is None else list(labels)
        self.how = "ids"
        if self.labels is not None:
            self.how = "as given"
            in_alphabet = sum(all(c in _BYTES for c in s) for s in self.labels)
            if any("Ġ" in s for s in self.labels) and 2 * in_alphabet >= len(self.labels):
                self.how = "byte-level decoded"
            elif any(s.startswith("▁") for s in self.labels):
                self.how = "'▁' as a space"

    def _bytes(self, i: int) -> bytes:
        s = self.labels[i]
        if self.how == "byte-level decoded" and all(c in _BYTES for c in s):
            return bytes(_BYTES[c] for c in s)
        if self.how == "'▁' as a space":
            s = s.replace("▁", " ")
        return s.encode("utf-8", "surrogatepass")

    def token(self, i: int) -> str:
        """The text of token ``i`` ('<none>' for -1: a position without a token)."""
        if i < 0:
            return "<none>"
        if self.labels is None:
            return f"<{i}>"
        return self._bytes(i).decode("utf-8", "replace")

    def text(self, ids) -> str:
        """The text of a sequence of tokens (their bytes joined, then decoded: a character
        split across tokens comes out whole)."""
        if self.labels is None or any(int(i) < 0 for i in ids):
            return "".join(self.token(int(i)) for i in ids)
        return b"".join(self._bytes(int(i)) for i in ids).decode("utf-8", "replace")
