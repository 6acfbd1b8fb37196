"""Deterministic generator of the C translation unit compiled by workload W7.

W7 measures `gcc -O2 -c` of a 500-line C file.  The file is generated rather
than checked in so that its size is a parameter, and it is generated from a
fixed seed so that every run (and every machine) compiles byte-identical
input.  The functions are deliberately varied (loops, switch state machines,
recursion with memoisation, floating point, tables, function pointers): 500
copies of one line would exercise a tiny part of the optimiser and make cc1's
time unrepresentative of real builds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SEED = 20240521
TARGET_LINES = 500

Chunk = list[str]
Generator = Callable[[random.Random, int], Chunk]


def _arith(rng: random.Random, k: int) -> Chunk:
    op = rng.choice(["&", "|", "^", "%"])
    c1 = rng.randint(3, 97)
    return [
        f"int64_t arith_{k}(const int32_t *v, size_t n, int32_t seed)",
        "{",
        "    int64_t acc = seed;",
        "    for (size_t i = 0; i < n; i++) {",
        "        int32_t x = v[i];",
        f"        if ((x {op} {c1}) > {rng.randint(1, 50)})",
        f"            acc += (int64_t)x * {rng.randint(2, 999)} - (acc >> {rng.randint(1, 9)});",
        "        else",
        f"            acc ^= (int64_t)(x + {rng.randint(1, 4096)}) << {rng.randint(1, 7)};",
        "    }",
        "    return acc;",
        "}",
    ]


def _struct(rng: random.Random, k: int) -> Chunk:
    return [
        f"struct rec_{k} {{",
        "    int32_t id;",
        "    double weight;",
        "    uint8_t flags;",
        f"    char name[{rng.choice([8, 16, 24, 32])}];",
        "};",
        "",
        f"double rec_{k}_score(const struct rec_{k} *r, size_t n)",
        "{",
        "    double total = 0.0;",
        "    for (size_t i = 0; i < n; i++) {",
        f"        if (r[i].flags & {rng.randint(1, 255)}u)",
        f"            total += r[i].weight * {rng.uniform(0.1, 9.9):.3f};",
        f"        else if (r[i].id % {rng.randint(2, 13)} == {rng.randint(0, 1)})",
        f"            total -= r[i].weight / {rng.uniform(1.0, 5.0):.3f};",
        "        total += (double)strlen(r[i].name);",
        "    }",
        "    return total;",
        "}",
    ]


def _switch(rng: random.Random, k: int) -> Chunk:
    states = rng.randint(3, 6)
    lines = [
        f"int machine_{k}(const unsigned char *in, size_t n)",
        "{",
        "    int state = 0, count = 0;",
        "    for (size_t i = 0; i < n; i++) {",
        "        switch (state) {",
    ]
    for s in range(states):
        nxt = (s + 1) % states
        other = rng.randrange(states)
        lines += [
            f"        case {s}:",
            f"            state = in[i] > {rng.randint(32, 126)} ? {nxt} : {other};",
            f"            count += {rng.randint(1, 5)};",
            "            break;",
        ]
    lines += [
        "        default:",
        "            state = 0;",
        "        }",
        "    }",
        "    return count;",
        "}",
    ]
    return lines


def _recursive(rng: random.Random, k: int) -> Chunk:
    size = rng.choice([32, 64, 128])
    base = rng.randint(2, 4)
    back = rng.randint(2, base)  # n - back stays >= 0 because n >= base here
    return [
        f"static uint64_t memo_{k}[{size}];",
        "",
        f"uint64_t seq_{k}(unsigned n)",
        "{",
        f"    if (n < {base})",
        f"        return n + {rng.randint(1, 9)};",
        f"    if (n < {size} && memo_{k}[n] != 0)",
        f"        return memo_{k}[n];",
        f"    uint64_t r = seq_{k}(n - 1) * {rng.randint(2, 7)} + seq_{k}(n - {back});",
        f"    if (n < {size})",
        f"        memo_{k}[n] = r;",
        "    return r;",
        "}",
    ]


def _string(rng: random.Random, k: int) -> Chunk:
    lo = rng.choice("abcdefgh")
    hi = rng.choice("pqrstuvwxyz")
    return [
        f"size_t scan_{k}(char *s)",
        "{",
        "    size_t len = strlen(s), hits = 0;",
        "    for (size_t i = 0; i < len / 2; i++) {",
        "        char t = s[i];",
        "        s[i] = s[len - 1 - i];",
        "        s[len - 1 - i] = t;",
        "    }",
        "    for (size_t i = 0; i < len; i++) {",
        f"        if (s[i] >= '{lo}' && s[i] <= '{hi}')",
        "            hits++;",
        f"        else if (s[i] == '{rng.choice('.,;:!?')}')",
        f"            s[i] = '{rng.choice('-_+=')}';",
        "    }",
        "    return hits;",
        "}",
    ]


def _float(rng: random.Random, k: int) -> Chunk:
    coeffs = ", ".join(f"{rng.uniform(-3.0, 3.0):.4f}" for _ in range(rng.randint(3, 8)))
    return [
        f"double poly_{k}(double x)",
        "{",
        f"    static const double c[] = {{ {coeffs} }};",
        "    double r = 0.0;",
        "    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)",
        "        r = r * x + c[i];",
        f"    return r {rng.choice('+-*')} {rng.uniform(0.5, 2.5):.3f};",
        "}",
        "",
        f"double integrate_{k}(double a, double b, int steps)",
        "{",
        f"    double h = (b - a) / steps, s = 0.5 * (poly_{k}(a) + poly_{k}(b));",
        "    for (int i = 1; i < steps; i++)",
        f"        s += poly_{k}(a + i * h);",
        "    return s * h;",
        "}",
    ]


def _matrix(rng: random.Random, k: int) -> Chunk:
    n = rng.randint(3, 8)
    return [
        f"void matmul_{k}(double out[{n}][{n}], const double a[{n}][{n}],",
        f"              const double b[{n}][{n}])",
        "{",
        f"    for (int i = 0; i < {n}; i++)",
        f"        for (int j = 0; j < {n}; j++) {{",
        "            double s = 0.0;",
        f"            for (int m = 0; m < {n}; m++)",
        "                s += a[i][m] * b[m][j];",
        f"            out[i][j] = s {rng.choice('+-*')} {rng.uniform(0.5, 2.0):.3f};",
        "        }",
        "}",
    ]


def _bits(rng: random.Random, k: int) -> Chunk:
    r = rng.randint(1, 31)
    return [
        f"uint32_t bits_{k}(uint32_t x)",
        "{",
        "    unsigned pop = 0;",
        "    uint32_t y = x;",
        "    while (y) {",
        "        y &= y - 1;",
        "        pop++;",
        "    }",
        f"    x = (x << {r}) | (x >> {32 - r});",
        f"    return x ^ (pop * {rng.randint(3, 9999)}u) ^ (x >> {rng.randint(1, 16)});",
        "}",
    ]


def _table(rng: random.Random, k: int) -> Chunk:
    m = rng.choice([16, 24, 32])
    values = [str(rng.randint(0, 65535)) for _ in range(m)]
    rows = [
        "    " + ", ".join(values[i : i + 8]) + ("," if i + 8 < m else "") for i in range(0, m, 8)
    ]
    return [
        f"static const uint16_t table_{k}[{m}] = {{",
        *rows,
        "};",
        "",
        f"unsigned lookup_{k}(const uint8_t *p, size_t n)",
        "{",
        f"    unsigned h = {rng.randint(1, 1 << 30)}u;",
        "    for (size_t i = 0; i < n; i++)",
        f"        h = (h * {rng.choice([31, 131, 16777619])}u) ^ table_{k}[p[i] % {m}];",
        "    return h;",
        "}",
    ]


def _dispatch(rng: random.Random, k: int) -> Chunk:
    return [
        f"static unsigned op_{k}_add(unsigned a, unsigned b) {{ return a + b; }}",
        f"static unsigned op_{k}_sub(unsigned a, unsigned b) {{ return a - b; }}",
        f"static unsigned op_{k}_mul(unsigned a, unsigned b) {{ return a * b; }}",
        f"static unsigned op_{k}_mix(unsigned a, unsigned b) "
        f"{{ return (a ^ b) + {rng.randint(1, 999)}u; }}",
        "",
        f"unsigned dispatch_{k}(const unsigned *ops, const unsigned *vals, size_t n)",
        "{",
        "    static unsigned (*const fn[])(unsigned, unsigned) = {",
        f"        op_{k}_add, op_{k}_sub, op_{k}_mul, op_{k}_mix,",
        "    };",
        f"    unsigned acc = {rng.randint(0, 1 << 20)}u;",
        "    for (size_t i = 0; i < n; i++)",
        "        acc = fn[ops[i] % 4u](acc, vals[i]);",
        "    return acc;",
        "}",
    ]


_GENERATORS: tuple[Generator, ...] = (
    _arith,
    _struct,
    _switch,
    _recursive,
    _string,
    _float,
    _matrix,
    _bits,
    _table,
    _dispatch,
)


def generate(lines: int = TARGET_LINES, seed: int = SEED) -> str:
    """Return C source of exactly `lines` lines (newline-terminated)."""
    rng = random.Random(seed)
    out: Chunk = [
        f"/* Generated by bench/w7_source.py for workload W7 (seed {seed}); do not edit. */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        "",
    ]
    k = 0
    while True:
        # Try the generators in a seeded random order and take the first
        # chunk that still fits, so the file ends close to the target with
        # real code rather than a long run of padding.
        order = list(_GENERATORS)
        rng.shuffle(order)
        for gen in order:
            chunk = gen(rng, k)
            if len(out) + len(chunk) + 1 <= lines:
                out += [*chunk, ""]
                k += 1
                break
        else:
            break
    pad = 0
    while len(out) < lines:
        out.append(f"const int w7_pad_{pad} = {rng.randint(0, 1 << 20)};")
        pad += 1
    return "\n".join(out) + "\n"
