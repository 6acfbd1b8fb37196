"""Keys for a machine's terminal, read the way ``tmux send-keys`` reads them.

A write to the export's ``ui/keys`` is text: words separated by spaces or
newlines (the separators are never typed).  A word that names a key is
that key's bytes; any other word is typed as it is.  What names a key,
and which bytes a key sends, follow tmux 3.3a (Debian 12's), whose
``send-keys`` is the reference the tests compare with:

* key names (case does not matter): ``Enter``, ``Tab``, ``BTab``,
  ``Space``, ``BSpace``, ``Escape``, ``Up``, ``Down``, ``Left``, ``Right``,
  ``Home``, ``End``, ``IC``/``Insert``, ``DC``/``Delete``,
  ``PPage``/``PageUp``/``PgUp``, ``NPage``/``PageDown``/``PgDn``,
  ``F1``-``F12``, ``KP0``-``KP9``, ``KP/ KP* KP- KP+ KP. KPEnter``;
* modifiers before a name or one character: ``C-`` (Ctrl), ``M-`` (Meta:
  ESC first), ``S-`` (Shift), combined (``C-M-x``); ``^x`` is ``C-x``;
* ``0xHH``: the character with that code;
* the bytes are xterm's as tmux sends them (key-string.c and
  input-keys.c): ``Home`` is ``ESC [1~``, F1-F4 ``ESC O P``..``S``, a
  modified cursor or function key ``ESC [1;mA`` with xterm's modifier
  number m; the cursor keys send ``ESC O A`` instead of ``ESC [A`` while
  the program has asked for application cursor keys (DECCKM, which the
  emulator tracks, as tmux's pane does);
* a combination tmux cannot send (``S-a``, ``C-S-a``, ``S-Enter``) is
  typed as its text, and one it sends as nothing (``C-Enter``, ``C-1``)
  types nothing, as there.

Not keys here: tmux's mouse, ``User`` and ``[NUL]``-style names (typed as
text), and the application keypad mode (the keypad keys always send
their characters).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["BadKeys", "encode", "lookup"]

ESC = b"\x1b"


class BadKeys(ValueError):
    """Text that is no sequence of keys (not UTF-8, or a NUL)."""


#: Names tmux 3.3a knows (key_string_table), lower case -> the key: a
#: character code, or the canonical name of a special key.
_NAMES: dict[str, int | str] = {
    "tab": 9,
    "space": 32,
    "enter": 13,
    "escape": 27,
    "bspace": "BSpace",
    "btab": "BTab",
    "ic": "IC",
    "insert": "IC",
    "dc": "DC",
    "delete": "DC",
    "home": "Home",
    "end": "End",
    "npage": "NPage",
    "pagedown": "NPage",
    "pgdn": "NPage",
    "ppage": "PPage",
    "pageup": "PPage",
    "pgup": "PPage",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    **{f"f{n}": f"F{n}" for n in range(1, 13)},
    **{f"kp{c}": f"KP{c}" for c in "/*-+.0123456789"},
    "kpenter": "KPEnter",
}

#: What a special key sends without modifiers (input_key_defaults).
_PLAIN: dict[str, bytes] = {
    "F1": b"\x1bOP",
    "F2": b"\x1bOQ",
    "F3": b"\x1bOR",
    "F4": b"\x1bOS",
    "F5": b"\x1b[15~",
    "F6": b"\x1b[17~",
    "F7": b"\x1b[18~",
    "F8": b"\x1b[19~",
    "F9": b"\x1b[20~",
    "F10": b"\x1b[21~",
    "F11": b"\x1b[23~",
    "F12": b"\x1b[24~",
    "IC": b"\x1b[2~",
    "DC": b"\x1b[3~",
    "Home": b"\x1b[1~",
    "End": b"\x1b[4~",
    "NPage": b"\x1b[6~",
    "PPage": b"\x1b[5~",
    "BTab": b"\x1b[Z",
    "Up": b"\x1b[A",
    "Down": b"\x1b[B",
    "Right": b"\x1b[C",
    "Left": b"\x1b[D",
    **{f"KP{c}": c.encode() for c in "/*-+.0123456789"},
    "KPEnter": b"\n",
}

#: The cursor keys in application cursor mode (DECCKM).
_APP_CURSOR = {"Up": b"\x1bOA", "Down": b"\x1bOB", "Right": b"\x1bOC", "Left": b"\x1bOD"}

#: Keys that carry their modifiers in the sequence (xterm's ``;m``).
_MODIFIED: dict[str, tuple[bytes, bytes]] = {
    **{f"F{n}": (b"\x1b[1;", b"PQRS"[n - 1 : n]) for n in range(1, 5)},
    **{
        f"F{n}": (b"\x1b[" + code + b";", b"~")
        for n, code in zip(
            range(5, 13), (b"15", b"17", b"18", b"19", b"20", b"21", b"23", b"24"), strict=True
        )
    },
    "Up": (b"\x1b[1;", b"A"),
    "Down": (b"\x1b[1;", b"B"),
    "Right": (b"\x1b[1;", b"C"),
    "Left": (b"\x1b[1;", b"D"),
    "Home": (b"\x1b[1;", b"H"),
    "End": (b"\x1b[1;", b"F"),
    "PPage": (b"\x1b[5;", b"~"),
    "NPage": (b"\x1b[6;", b"~"),
    "IC": (b"\x1b[2;", b"~"),
    "DC": (b"\x1b[3;", b"~"),
}

#: Characters tmux 3.3a leaves with a Ctrl modifier instead of turning
#: into a control character (key_string_lookup_string's ``other``).
_CTRL_KEPT = frozenset("!#()+,-.0123456789:;<=>'\r\t\x7f`/")

_HEX = re.compile(r"0x([0-9a-fA-F]+)")


class Key(NamedTuple):
    """One key: a character code or a special key's name, and modifiers."""

    code: int | str
    ctrl: bool = False
    meta: bool = False
    shift: bool = False


def lookup(word: str) -> Key | None:
    """The key ``word`` names, or None when it is text to type."""
    if word.lower() in ("none", "any"):
        return None
    if word.startswith("0x"):
        m = _HEX.match(word)
        if m is None or len(m.group(1)) > 8:
            return None
        value = int(m.group(1), 16)
        if value >= 32 and (value > 0x10FFFF or 0xD800 <= value <= 0xDFFF):
            return None
        return Key(value)
    ctrl = meta = shift = False
    rest = word
    if rest.startswith("^") and len(rest) > 1:
        ctrl, rest = True, rest[1:]
    while len(rest) >= 2 and rest[1] == "-":
        flag = rest[0].lower()
        if flag == "c":
            ctrl = True
        elif flag == "m":
            meta = True
        elif flag == "s":
            shift = True
        else:
            return None
        rest = rest[2:]
    if not rest:
        return None
    code: int | str
    if len(rest) == 1:
        code = ord(rest)
        if code < 32:
            return None
        if code > 127:
            return Key(code, ctrl, meta, shift)
    else:
        found = _NAMES.get(rest.lower())
        if found is None:
            return None
        code = found
    if isinstance(code, int) and ctrl and chr(code) not in _CTRL_KEPT and code not in (9, 13, 27):
        if 97 <= code <= 122:
            code -= 96
        elif 64 <= code <= 95:
            code -= 64
        elif code == 32:
            code = 0
        elif code == 63:
            code = 127
        else:
            return None
        ctrl = False
    return Key(code, ctrl, meta, shift)


def key_bytes(key: Key, *, app_cursor: bool = False) -> bytes | None:
    """What ``key`` sends (tmux's input_key): bytes, possibly none; None
    when tmux has no sequence for it (the word is then typed as text)."""
    code, ctrl, meta, shift = key
    if code == "BSpace":
        code = 0x7F
    if isinstance(code, int):
        prefix = ESC if meta else b""
        if code > 0x7F:
            # A character beyond ASCII: itself, whatever Ctrl or Shift say.
            return prefix + chr(code).encode()
        if not ctrl and not shift:
            return prefix + bytes([code])
        if (ctrl, meta, shift) != (True, False, False):
            return None
        special = {32: 0, ord("2"): 0, ord("|"): 28, ord("6"): 30, ord("-"): 31, ord("/"): 31}
        if code in special:
            return bytes([special[code]])
        if code == ord("?"):
            return b"\x7f"
        if ord("A") <= code <= ord("_"):
            return bytes([code - ord("A")])
        if ord("a") <= code <= ord("~"):
            return bytes([code - 96])
        return b""
    if not (ctrl or meta or shift):
        if app_cursor and code in _APP_CURSOR:
            return _APP_CURSOR[code]
        return _PLAIN[code]
    if code in _MODIFIED:
        start, end = _MODIFIED[code]
        return start + str(1 + shift + 2 * meta + 4 * ctrl).encode() + end
    if meta and not ctrl and not shift:
        return ESC + _PLAIN[code]
    return b"" if (ctrl, meta, shift) == (True, False, False) else None


def encode(data: bytes, *, app_cursor: bool = False) -> bytes:
    """The bytes a write of ``data`` to ``ui/keys`` types.  BadKeys
    (nothing typed) when it is not UTF-8 text or holds a NUL."""
    if b"\0" in data:
        raise BadKeys("a NUL byte: keys are text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadKeys(f"not UTF-8 text (byte {exc.start})") from None
    out = bytearray()
    for line in text.split("\n"):
        for word in line.split(" "):
            if not word:
                continue
            key = lookup(word)
            sent = key_bytes(key, app_cursor=app_cursor) if key is not None else None
            out += word.encode() if sent is None else sent
    return bytes(out)
