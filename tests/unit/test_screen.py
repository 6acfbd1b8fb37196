"""umld/core/screen.py: pyte with the alternate screen, a scrollback and a
safe title, and a feed that skips what pyte need not draw.  The fast feed
is checked against pyte fed every byte, on random output: plain lines of
every length around the width, cut into chunks anywhere (inside escape
sequences and UTF-8 characters too), mixed with colours, cursor motion,
lone CR and LF, tabs, titles, scroll margins and the alternate screen."""

from __future__ import annotations

import random

import pyte
import pytest

from umld.core.screen import Screen, Terminal


def state(screen: Screen) -> tuple[object, ...]:
    cells = [
        [
            (c.data, c.fg, c.bg, c.bold, c.reverse)
            for c in (screen.buffer[y][x] for x in range(screen.columns))
        ]
        for y in range(screen.lines)
    ]
    return (
        cells,
        screen.cursor.x,
        screen.cursor.y,
        list(screen.scrollback),
        screen.title,
        screen.alternate,
    )


EXTRAS = [
    b"\x1b[31m",
    b"\x1b[0m",
    b"\x1b[1;44m",
    b"\x1b[H",
    b"\x1b[5;3H",
    b"\x1b[2J",
    b"\x1b[K",
    b"\r",
    b"\n",
    b"\t",
    b"\x08",
    b"\x1b]0;a title\x07",
    b"\x1b[2;3r",
    b"\x1b[r",
    b"\x1b[?1049h",
    b"\x1b[?1049l",
    b"\x1b[?47h",
    b"\x1b[?47l",
    b"\x1b[?7l",  # autowrap off
    b"\x1b[?7h",
    "caf\u00e9 \u4e16\u754c".encode(),
    b"\x1bM",  # reverse index
]


def random_output(rng: random.Random, cols: int) -> bytes:
    parts = []
    for _ in range(rng.randrange(50, 400)):
        if rng.random() < 0.08:
            parts.append(rng.choice(EXTRAS))
        else:
            n = rng.choice([0, 1, cols - 1, cols, cols + 1, 2 * cols, rng.randrange(3 * cols)])
            parts.append(bytes(rng.randrange(0x20, 0x7F) for _ in range(n)) + b"\r\n")
    return b"".join(parts)


def feed_both(data: bytes, cols: int, rows: int, rng: random.Random) -> tuple[Terminal, Screen]:
    fast = Terminal(cols, rows, scrollback=50)
    slow = Screen(cols, rows, scrollback=50)
    stream = pyte.ByteStream(slow)
    i = 0
    while i < len(data):
        j = min(len(data), i + rng.choice([1, 3, 17, 512, 4096, 1 << 16]))
        fast.feed(data[i:j])
        stream.feed(data[i:j])
        i = j
    return fast, slow


@pytest.mark.parametrize("size", [(10, 4), (7, 3), (80, 24), (5, 1), (12, 2)])
def test_the_fast_feed_is_pyte_fed_every_byte(size: tuple[int, int]) -> None:
    cols, rows = size
    rng = random.Random(cols * 1000 + rows)
    for _ in range(60):
        data = random_output(rng, cols)
        fast, slow = feed_both(data, cols, rows, rng)
        assert state(fast.screen) == state(slow), data


def test_a_long_plain_run_is_skipped_and_still_exact() -> None:
    data = b"".join(b"%d\r\n" % i for i in range(200_000))
    fast = Terminal(80, 24, scrollback=100)
    calls = []
    real = fast.stream.feed

    def counting(chunk: bytes) -> None:
        calls.append(len(chunk))
        real(chunk)

    fast.stream.feed = counting  # type: ignore[method-assign]
    fast.feed(data)
    # pyte drew a few screens, not 1.3 MB.
    assert sum(calls) < 4_000, sum(calls)
    slow = Screen(80, 24, scrollback=100)
    pyte.ByteStream(slow).feed(data)
    assert state(fast.screen) == state(slow)
    assert fast.screen.display[-2].rstrip() == "199999"
    assert list(fast.screen.scrollback)[-1] == "199976"


def test_the_alternate_screen_gives_the_normal_one_back() -> None:
    t = Terminal(20, 4)
    t.feed(b"$ less file\r\n")
    t.feed(b"\x1b[?1049h\x1b[H\x1b[2Jpage one\r\n")
    assert t.screen.display[0].rstrip() == "page one" and t.screen.alternate
    t.feed(b"\x1b[?1049l")
    assert [r.rstrip() for r in t.screen.display] == ["$ less file", "", "", ""]
    assert (t.screen.cursor.y, t.screen.cursor.x) == (1, 0)
    # Nothing of the alternate screen went into the scrollback.
    t.feed(b"\x1b[?1049h" + b"x\r\n" * 10 + b"\x1b[?1049l")
    assert list(t.screen.scrollback) == []


def test_a_title_never_carries_control_characters() -> None:
    t = Terminal(20, 4)
    t.feed(b"\x1b]0;evil\x1b]52;c;QUFBQQ==\x07")
    t.feed(b"\x1b]2;tab\there\x9b6n\x07")
    assert "\x1b" not in t.screen.title and "\x07" not in t.screen.title
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in t.screen.title)


def test_an_endless_sequence_does_not_grow_umld() -> None:
    """A guest's title that never ends, or a CSI with endless parameters:
    what pyte keeps is bounded, and the terminal goes on afterwards."""
    import tracemalloc

    t = Terminal(20, 4)
    chunk = b"A" * (64 << 10)
    tracemalloc.start()
    try:
        t.feed(b"\x1b]0;")
        for _ in range(160):  # 10 MiB of title
            t.feed(chunk)
        t.feed(b"\x07\x1b[" + b"1;" * (1 << 20) + b"m")  # 2 MiB of parameters
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the chunks themselves are 2 MiB at most
    assert len(t.screen.title) <= 4096 and t.screen.title.startswith("AAAA")
    t.feed(b"\x1b[Hstill drawing\r\n")
    assert t.screen.display[0].rstrip() == "still drawing"


def test_a_sequence_pyte_cannot_take_does_not_stop_the_terminal() -> None:
    t = Terminal(20, 4)
    t.feed(b"\x1b[" + b"9" * 5000 + b"m")  # int() refuses 5000 digits... if kept
    t.feed(b"\x1b[1\xd9\x80x")  # a CSI ended by a character pyte has no meaning for
    t.feed(b"\x1b[Hafter\r\n")
    assert t.screen.display[0].rstrip() == "after"
