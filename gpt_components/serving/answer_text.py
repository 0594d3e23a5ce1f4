"""An answer's text as its tokens arrive: what may be shown now, and where the answer stops.

An engine hands out token ids; a reader wants text, a little at a time. Three things make the
text lag behind the ids:

- a character may take several tokens (byte-level BPE splits an emoji or an accented letter
  across tokens): until its last byte arrives, the decoded text ends with U+FFFD, which must
  not be shown, since the next token turns it into the real character;
- a stop string ends the answer *before* it: text that could still grow into a stop string
  (``"\\n\\n###"`` when ``"\\n\\n### Instruction:"`` stops) is held back until it cannot;
- an end id (``<|endoftext|>``, ``<|eot_id|>``) ends the answer and is never text.

``AnswerText.feed(output, decode)`` takes an engine's ``RequestOutput`` and returns the text it
adds; ``finish_reason`` becomes ``"stop"`` or ``"length"`` once the answer is over (a stop
string found here ends it even when the engine has not noticed: the caller aborts the request).

>>> from gpt_components.serving import RequestOutput
>>> answer = AnswerText(stop=("END",))
>>> decode = lambda ids: "".join(chr(i) for i in ids)
>>> answer.feed(RequestOutput("r", [72], [72], False, None), decode)  # "H"
'H'
>>> answer.feed(RequestOutput("r", [69], [72, 69], False, None), decode)  # "HE": maybe "END"
''
>>> answer.feed(RequestOutput("r", [121], [72, 69, 121], False, None), decode)  # "HEy": no
'Ey'
>>> answer.feed(RequestOutput("r", [69, 78, 68], [72, 69, 121, 69, 78, 68], False, None), decode)
''
>>> answer.text, answer.finish_reason
('HEy', 'stop')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .requests import RequestOutput

__all__ = ["AnswerText"]


@dataclass
class AnswerText:
    """The text of one answer so far (``text``), its token count and its finish reason."""

    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = frozenset()
    text: str = ""  # the text given out so far
    tokens: int = 0  # ids the engine made, end id included
    finish_reason: str | None = None

    def feed(self, output: RequestOutput, decode: Callable[[list[int]], str]) -> str:
        """The text ``output`` adds (possibly empty); sets ``finish_reason`` once done."""
        ids = list(output.token_ids)
        self.tokens = len(ids) if output.num_generated is None else output.num_generated
        while ids and ids[-1] in self.stop_ids:  # an engine may keep the end id: never text
            ids.pop()
        full = decode(ids)
        # Trailing replacement characters are bytes of a character still being written: a
        # stop string is looked for in the settled text only, or the next token could make
        # it vanish (a stop string may itself hold U+FFFD).
        settled = full if output.finished else full.rstrip("\ufffd")
        cuts = [settled.find(s) for s in self.stop if s in settled]
        if cuts:
            full, self.finish_reason = full[:min(cuts)], "stop"
        elif output.finished:
            self.finish_reason = "length" if output.finish_reason == "length" else "stop"
        else:
            full = full[:_safe_end(full, self.stop)]
        new = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += new
        return new


def _safe_end(text: str, stop: tuple[str, ...]) -> int:
    """How much of ``text`` no later token can change: not a trailing replacement character
    (a character whose bytes are still coming), nor a tail that begins a stop string."""
    end = len(text.rstrip("\ufffd"))
    held = 0
    for s in stop:
        for size in range(min(len(s) - 1, end), held, -1):
            if text[end - size:end] == s[:size]:
                held = size
                break
    return end - held
