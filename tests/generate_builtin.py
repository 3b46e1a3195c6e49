"""Generate the built-in replay corpus, ``vllm_maxact/data/builtin.jsonl``.

Why a generator instead of a downloaded data set: the replay pipeline must work offline and the
corpus must be redistributable, so every text is composed here from templates, word lists and
procedural generators written for this project (no text is copied from anywhere). The output is
deterministic: the same ``--seed`` and ``--total`` give a byte-identical file.

Eight domains mirror the study's mix (weights in ``DOMAIN_WEIGHTS``); lengths vary from ~50 to
~3000 tokens so every length bucket of the replay protocol gets exercised.

Run:  python tests/generate_builtin.py [--out PATH] [--seed S] [--total N]
(a development tool: it does not ship in the package)
Stdlib only.
"""

# ruff: noqa: E501  (template strings and word lists are data; wrapping them hurts readability)

from __future__ import annotations

import argparse
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

DEFAULT_SEED = 20240601
DEFAULT_TOTAL = 520
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "vllm_maxact" / "data" / "builtin.jsonl"

#: Percent of samples per domain (the study's corpus mix, rounded).
DOMAIN_WEIGHTS: dict[str, int] = {
    "math": 17,
    "code": 17,
    "web": 17,
    "knowledge": 17,
    "chinese": 8,
    "other_scripts": 6,
    "dialogue": 9,
    "structured": 9,
}

#: Rough characters per token, used only to aim each sample at a token length.
CHARS_PER_TOKEN: dict[str, float] = {
    "math": 3.3,
    "code": 3.4,
    "web": 4.4,
    "knowledge": 4.6,
    "chinese": 1.4,
    "other_scripts": 2.4,
    "dialogue": 4.3,
    "structured": 2.9,
}

Rng = random.Random
Pool = Sequence[str] | Callable[[Rng], str]

# ----------------------------------------------------------------------------- helpers

_SLOT = re.compile(r"\{([a-z][a-z0-9_]{2,})\}")
_CODE_SLOT = re.compile(r"@@([A-Za-z0-9_]+)@@")


def fill(rng: Rng, template: str, pools: dict[str, Pool], fixed: dict[str, str] | None = None) -> str:
    """Replace ``{slot}`` with a draw from ``pools`` (or ``fixed``); unknown braces (LaTeX) stay.

    Pool values may contain slots themselves; they are filled too (a few passes deep).
    """
    fixed = fixed or {}

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in fixed:
            return fixed[key]
        pool = pools.get(key)
        if pool is None:
            return m.group(0)
        return pool(rng) if callable(pool) else rng.choice(pool)

    out = template
    for _ in range(4):
        new = _SLOT.sub(sub, out)
        if new == out:
            break
        out = new
    return out


def code(template: str, **kw: object) -> str:
    """Substitute ``@@name@@`` in code templates (so braces in C/JS/LaTeX need no escaping)."""

    def sub(m: re.Match[str]) -> str:
        return str(kw[m.group(1)])

    return _CODE_SLOT.sub(sub, template)


def num(lo: int, hi: int) -> Callable[[Rng], str]:
    return lambda rng: str(rng.randint(lo, hi))


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def camel(s: str) -> str:
    return "".join(part.capitalize() for part in s.split("_"))


def sentences(
    rng: Rng, templates: Sequence[str], pools: dict[str, Pool], k: int, fixed: dict[str, str] | None = None
) -> list[str]:
    """k filled templates without repeating a template inside one call (when possible)."""
    chosen = rng.sample(list(templates), min(k, len(templates)))
    while len(chosen) < k:
        chosen.append(rng.choice(templates))
    return [cap(fill(rng, t, pools, fixed)) for t in chosen]


def ordered(rng: Rng, items: Sequence[str], lo: int, hi: int) -> list[str]:
    """A random subset that keeps the original order (for texts whose sentences have a logical order)."""
    idx = sorted(rng.sample(range(len(items)), min(len(items), rng.randint(lo, hi))))
    return [items[i] for i in idx]


def paragraph(
    rng: Rng,
    templates: Sequence[str],
    pools: dict[str, Pool],
    lo: int,
    hi: int,
    fixed: dict[str, str] | None = None,
    joiner: str = " ",
) -> str:
    return joiner.join(sentences(rng, templates, pools, rng.randint(lo, hi), fixed))


def grow(target_chars: int, first: Callable[[], str], more: Callable[[], str], sep: str = "\n\n") -> str:
    """Start with ``first()`` and append ``more()`` until the text reaches ``target_chars``."""
    text = first()
    while len(text) < target_chars:
        text += sep + more()
    return text


def date(rng: Rng, y0: int = 2015, y1: int = 2024) -> str:
    return f"{rng.randint(y0, y1)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock(rng: Rng) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


# ----------------------------------------------------------------------------- shared English pools

FIRST_NAMES = (
    "Amara Bilal Chen Dalia Emeka Farah Gustavo Hana Idris Jonas Keiko Luca Mira Nadia Omar Priya "
    "Quentin Rosa Sanjay Tomas Ulla Viktor Wen Yara Zoe Aiden Beatriz Caleb Devi Elif Finn Greta Hugo "
    "Ines Jasper Kofi Lena Mateo Nora Oskar Paula Rafael Sofia Theo Uma Valentina Xavier Yusuf Zainab"
).split()
LAST_NAMES = (
    "Abara Bergstrom Castellanos Dlamini Eriksen Fontaine Gallagher Haddad Ito Jovanovic Kowalski "
    "Lindqvist Moreau Nakamura Okafor Petrov Quispe Rahman Sato Thorsen Ueda Varga Whitfield Xu Yilmaz "
    "Zeller Ambrose Brennan Cho Delacroix Esposito Ferreira Grant Holloway Iyer Jensen Kaur Larsen Mbeki "
    "Novak Ortega Park Reyes Schmidt Tanaka Underwood Vasquez Walsh Young Zhou"
).split()
TOWN_PRE = (
    "Ash Bel Cor Dun El Fair Glen Hal Ivy Kel Lor Mar North Oak Pen Red Stone Thorn Wes Wil Brae Cald".split()
)
TOWN_SUF = (
    "ford brook ton field haven mouth wick dale bury port stead mere cliff gate well moor by hollow".split()
)
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October November December").split()
HANDLE_A = "quiet rusty lucky brave tiny odd amber sleepy cosmic mellow swift grumpy frosty".split()
HANDLE_B = "falcon otter teapot pixel badger comet walrus fern lantern moth kettle heron yak".split()


def person(rng: Rng) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def town(rng: Rng) -> str:
    return rng.choice(TOWN_PRE) + rng.choice(TOWN_SUF)


def handle(rng: Rng) -> str:
    return f"{rng.choice(HANDLE_A)}{rng.choice(HANDLE_B)}{rng.randint(1, 99)}"


def price(rng: Rng) -> str:
    return f"${rng.randint(5, 400)}.{rng.choice(['00', '49', '95', '99'])}"


COMMON: dict[str, Pool] = {
    "person": person,
    "first": FIRST_NAMES,
    "town": town,
    "weekday": WEEKDAYS,
    "month": MONTHS,
    "small": num(2, 9),
    "num": num(10, 90),
    "big": num(120, 9800),
    "pct": num(12, 88),
    "year": num(1820, 2021),
    "price": price,
    "handle": handle,
}

# A small combinatorial grammar for filler commentary, so long texts do not loop over a few lines.
G_OPEN = [
    "Honestly,",
    "In practice,",
    "To be fair,",
    "As it turns out,",
    "Looking back,",
    "For what it is worth,",
    "Strangely enough,",
    "In my experience,",
    "More often than not,",
    "At first glance,",
    "Either way,",
]
G_SUBJ = [
    "the hardest part",
    "the cheapest option",
    "the advice I keep coming back to",
    "the first attempt",
    "the second round",
    "the local community",
    "the official guidance",
    "the old method",
    "a simple checklist",
    "a slower pace",
    "the morning routine",
    "the weekend schedule",
]
G_VERB = [
    "turned out to be",
    "ended up being",
    "was never really",
    "is still",
    "became",
    "felt like",
    "proved to be",
    "seemed to be",
]
G_OBJ = [
    "the most useful lesson",
    "a bit overrated",
    "less important than patience",
    "the thing that made everything click",
    "a surprisingly good compromise",
    "worth the extra effort",
    "more about habit than talent",
    "the source of most of my mistakes",
    "easy to underestimate",
    "a decent starting point",
    "harder to explain than to do",
]
G_TAIL = [
    "",
    "",
    " for most people I talked to",
    " once the novelty wore off",
    " after a few weeks",
    " in hindsight",
    " at least in my small corner of the world",
    " regardless of budget",
]


def commentary(rng: Rng) -> str:
    return (
        f"{rng.choice(G_OPEN)} {rng.choice(G_SUBJ)} {rng.choice(G_VERB)} "
        f"{rng.choice(G_OBJ)}{rng.choice(G_TAIL)}."
    )


# ============================================================================= math


def tex_num(v: Fraction | int) -> str:
    v = Fraction(v)
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def tex_poly(coeffs: Sequence[int | Fraction], var: str = "x") -> str:
    """Coefficients highest power first -> '3x^2 - x + \\frac{1}{2}'."""
    deg = len(coeffs) - 1
    parts: list[tuple[str, str]] = []
    for i, c in enumerate(coeffs):
        p = deg - i
        c = Fraction(c)
        if c == 0:
            continue
        a = abs(c)
        if p == 0:
            body = tex_num(a)
        else:
            coef = "" if a == 1 else tex_num(a)
            body = coef + (var if p == 1 else f"{var}^{{{p}}}" if p > 9 else f"{var}^{p}")
        parts.append(("-" if c < 0 else "+", body))
    if not parts:
        return "0"
    out = ("-" if parts[0][0] == "-" else "") + parts[0][1]
    for sign, body in parts[1:]:
        out += f" {sign} {body}"
    return out


def horner(coeffs: Sequence[int | Fraction], x: int | Fraction) -> Fraction:
    acc = Fraction(0)
    for c in coeffs:
        acc = acc * x + c
    return acc


def _nonzero(rng: Rng, lo: int, hi: int) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v:
            return v


def p_linear(rng: Rng) -> tuple[str, str]:
    a, x, b = rng.randint(2, 12), rng.randint(-15, 15), _nonzero(rng, -30, 30)
    c = a * x + b
    verb = f"Subtract ${b}$ from" if b > 0 else f"Add ${-b}$ to"
    sol = (
        f"{verb} both sides to get ${a}x = {c - b}$. Dividing both sides by ${a}$ gives $x = {x}$. "
        f"Check: ${a} \\cdot ({x}) {'+' if b > 0 else '-'} {abs(b)} = {c}$, as required."
    )
    return f"Solve for $x$: ${tex_poly([a, b])} = {c}$.", sol


def p_quadratic(rng: Rng) -> tuple[str, str]:
    r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
    a = rng.choice([1, 1, 1, 2, 3])
    b, c = -a * (r1 + r2), a * r1 * r2
    disc = b * b - 4 * a * c
    root = abs(a * (r1 - r2))
    lo, hi = sorted((r1, r2))
    sol = (
        f"The discriminant is $\\Delta = b^2 - 4ac = ({b})^2 - 4 \\cdot {a} \\cdot ({c}) = {disc}$, "
        f"so $\\sqrt{{\\Delta}} = {root}$. By the quadratic formula, "
        f"$x = \\frac{{{-b} \\pm {root}}}{{{2 * a}}}$, "
    )
    if r1 == r2:
        sol += f"so $\\Delta = 0$ and $x = {r1}$ is a repeated root. "
    else:
        sol += f"which gives $x = {lo}$ and $x = {hi}$. "
    fac = f"(x {'-' if r1 >= 0 else '+'} {abs(r1)})(x {'-' if r2 >= 0 else '+'} {abs(r2)})"
    sol += f"Equivalently, the polynomial factors as ${'' if a == 1 else a}{fac}$."
    return f"Find all real solutions of ${tex_poly([a, b, c])} = 0$.", sol


def p_derivative(rng: Rng) -> tuple[str, str]:
    if rng.random() < 0.3:
        a, b, n = rng.randint(2, 7), _nonzero(rng, -9, 9), rng.randint(3, 8)
        inner = tex_poly([a, b])
        return (
            f"Differentiate $f(x) = ({inner})^{{{n}}}$.",
            f"By the chain rule with $u = {inner}$ and $u' = {a}$, "
            f"$f'(x) = {n} ({inner})^{{{n - 1}}} \\cdot {a} = {n * a}({inner})^{{{n - 1}}}$.",
        )
    deg = rng.randint(2, 5)
    coeffs = [_nonzero(rng, -9, 9)] + [rng.randint(-9, 9) for _ in range(deg)]
    deriv = [c * (deg - i) for i, c in enumerate(coeffs[:-1])]
    x0 = rng.randint(-3, 4)
    val = horner(deriv, x0)
    return (
        f"Let $f(x) = {tex_poly(coeffs)}$. Compute $f'(x)$ and evaluate $f'({x0})$.",
        f"Applying the power rule term by term, $f'(x) = {tex_poly(deriv)}$. "
        f"Substituting $x = {x0}$ gives $f'({x0}) = {tex_num(val)}$.",
    )


def p_integral(rng: Rng) -> tuple[str, str]:
    deg = rng.randint(1, 3)
    coeffs = [_nonzero(rng, -6, 6)] + [rng.randint(-6, 6) for _ in range(deg)]
    anti = [Fraction(c, deg - i + 1) for i, c in enumerate(coeffs)] + [Fraction(0)]
    a = rng.randint(-3, 2)
    b = a + rng.randint(1, 4)
    fa, fb = horner(anti, a), horner(anti, b)
    return (
        f"Evaluate $\\int_{{{a}}}^{{{b}}} \\left({tex_poly(coeffs)}\\right)\\,dx$.",
        f"An antiderivative is $F(x) = {tex_poly(anti)}$. Then $F({b}) = {tex_num(fb)}$ and "
        f"$F({a}) = {tex_num(fa)}$, so the integral equals $F({b}) - F({a}) = {tex_num(fb - fa)}$.",
    )


def p_system(rng: Rng) -> tuple[str, str]:
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    while True:
        a1, b1, a2, b2 = (_nonzero(rng, -7, 7) for _ in range(4))
        det = a1 * b2 - a2 * b1
        if det:
            break
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    dx, dy = c1 * b2 - c2 * b1, a1 * c2 - a2 * c1
    eq1 = tex_poly([a1, 0]) + (f" + {tex_poly([b1, 0], 'y')}" if b1 > 0 else f" - {tex_poly([-b1, 0], 'y')}")
    eq2 = tex_poly([a2, 0]) + (f" + {tex_poly([b2, 0], 'y')}" if b2 > 0 else f" - {tex_poly([-b2, 0], 'y')}")
    return (
        f"Solve the system ${eq1} = {c1}$, ${eq2} = {c2}$.",
        f"Using Cramer's rule: $D = ({a1})({b2}) - ({a2})({b1}) = {det}$, $D_x = {dx}$ and $D_y = {dy}$. "
        f"Hence $x = D_x / D = {x}$ and $y = D_y / D = {y}$. Substituting back confirms both equations.",
    )


def p_series(rng: Rng) -> tuple[str, str]:
    if rng.random() < 0.5:
        a1, d, n = rng.randint(-20, 50), _nonzero(rng, -5, 9), rng.randint(8, 60)
        an = a1 + (n - 1) * d
        total = n * (a1 + an) // 2
        return (
            f"Find the sum of the first ${n}$ terms of the arithmetic sequence with $a_1 = {a1}$ and "
            f"common difference $d = {d}$.",
            f"The last term is $a_{{{n}}} = a_1 + ({n} - 1)d = {an}$. Therefore "
            f"$S_{{{n}}} = \\frac{{n(a_1 + a_n)}}{{2}} = \\frac{{{n}({a1} + {an})}}{{2}} = {total}$.",
        )
    a = rng.randint(1, 20)
    q = rng.randint(2, 9)
    r = Fraction(rng.choice([-1, 1]) * rng.randint(1, q - 1), q)
    s = Fraction(a) / (1 - r)
    return (
        f"Compute $\\sum_{{k=0}}^{{\\infty}} {a} \\left({tex_num(r)}\\right)^k$.",
        f"This is a geometric series with ratio $r = {tex_num(r)}$ and $|r| < 1$, so it converges to "
        f"$\\frac{{{a}}}{{1 - r}} = {tex_num(s)}$.",
    )


def p_gcd(rng: Rng) -> tuple[str, str]:
    g = rng.randint(2, 30)
    a, b = g * rng.randint(11, 90), g * rng.randint(5, 60)
    if a < b:
        a, b = b, a
    steps = []
    x, y = a, b
    while y:
        steps.append(f"${x} = {x // y} \\cdot {y} + {x % y}$")
        x, y = y, x % y
    lcm = a * b // x
    return (
        f"Use the Euclidean algorithm to find $\\gcd({a}, {b})$, then compute $\\operatorname{{lcm}}({a}, {b})$.",
        "Repeated division gives " + "; ".join(steps) + f". The last nonzero remainder is ${x}$, so "
        f"$\\gcd({a}, {b}) = {x}$ and $\\operatorname{{lcm}}({a}, {b}) = \\frac{{{a} \\cdot {b}}}{{{x}}} = {lcm}$.",
    )


def p_percent(rng: Rng) -> tuple[str, str]:
    who = rng.choice(FIRST_NAMES)
    item = rng.choice(
        [
            "a bicycle",
            "a pair of boots",
            "a desk lamp",
            "a winter coat",
            "a tablet",
            "a tent",
            "a set of pans",
            "a guitar",
        ]
    )
    cents = rng.randint(1200, 48000)
    disc = rng.choice([10, 15, 20, 25, 30, 40])
    tax = rng.choice(["5", "6.5", "7", "8", "8.25", "10", "20"])
    p = Fraction(cents, 100)
    after = p * (100 - disc) / 100
    final = after * (100 + Fraction(tax)) / 100
    return (
        f"{who} buys {item} listed at \\${float(p):.2f}. The store takes {disc}\\% off, and then a sales "
        f"tax of {tax}\\% is added. What is the final price?",
        f"The discounted price is ${float(p):.2f} \\times {1 - disc / 100:.2f} = {float(after):.2f}$. "
        f"Adding tax gives ${float(after):.2f} \\times {1 + float(tax) / 100:.4g} \\approx {float(final):.2f}$, "
        f"so the final price is about \\${float(final):.2f}.",
    )


def p_matrix(rng: Rng) -> tuple[str, str]:
    while True:
        a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
        det = a * d - b * c
        if det:
            break
    inv = [[Fraction(d, det), Fraction(-b, det)], [Fraction(-c, det), Fraction(a, det)]]
    m = f"\\begin{{pmatrix}} {a} & {b} \\\\ {c} & {d} \\end{{pmatrix}}"
    mi = (
        f"\\begin{{pmatrix}} {tex_num(inv[0][0])} & {tex_num(inv[0][1])} \\\\ "
        f"{tex_num(inv[1][0])} & {tex_num(inv[1][1])} \\end{{pmatrix}}"
    )
    return (
        f"Let $A = {m}$. Find $\\det A$ and $A^{{-1}}$.",
        f"$\\det A = ({a})({d}) - ({b})({c}) = {det}$. Since the determinant is nonzero, "
        f"$A^{{-1}} = \\frac{{1}}{{{det}}}\\begin{{pmatrix}} {d} & {-b} \\\\ {-c} & {a} \\end{{pmatrix}} = {mi}$.",
    )


def p_probability(rng: Rng) -> tuple[str, str]:
    r, b = rng.randint(2, 9), rng.randint(2, 9)
    n = r + b
    p = Fraction(r * (r - 1), n * (n - 1))
    q = Fraction(2 * r * b, n * (n - 1))
    return (
        f"A bag holds {r} red and {b} blue marbles. Two are drawn without replacement. Find the "
        "probability that both are red, and the probability that the colours differ.",
        f"$P(\\text{{both red}}) = \\frac{{{r}}}{{{n}}} \\cdot \\frac{{{r - 1}}}{{{n - 1}}} = {tex_num(p)}$. "
        f"For different colours, $P = 2 \\cdot \\frac{{{r}}}{{{n}}} \\cdot \\frac{{{b}}}{{{n - 1}}} = {tex_num(q)}$.",
    )


def p_modexp(rng: Rng) -> tuple[str, str]:
    base, e, m = (
        rng.randint(2, 20),
        rng.randint(10, 200),
        rng.choice([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 97]),
    )
    bits = bin(e)[2:]
    squares, cur = [], base % m
    for k in range(len(bits)):
        squares.append(f"{base}^{{{2**k}}} \\equiv {cur}")
        cur = cur * cur % m
    used = [2**k for k, bit in enumerate(reversed(bits)) if bit == "1"]
    return (
        f"Compute ${base}^{{{e}}} \\bmod {m}$ by repeated squaring.",
        f"In binary, ${e} = {bits}_2 = " + " + ".join(str(u) for u in reversed(used)) + "$. Squaring modulo "
        f"${m}$: $" + ",\\ ".join(squares) + f"$. Multiplying the needed powers gives "
        f"${base}^{{{e}}} \\equiv {pow(base, e, m)} \\pmod{{{m}}}$.",
    )


def p_limit(rng: Rng) -> tuple[str, str]:
    if rng.random() < 0.5:
        r = _nonzero(rng, -9, 9)
        minus, plus = tex_poly([1, -r]), tex_poly([1, r])
        return (
            f"Evaluate $\\lim_{{x \\to {r}}} \\frac{{x^2 - {r * r}}}{{{minus}}}$.",
            f"Factor the numerator: $x^2 - {r * r} = ({minus})({plus})$. After cancelling the common factor "
            f"${minus}$ the expression becomes ${plus}$, which is continuous at $x = {r}$, so the limit is "
            f"${r} + ({r}) = {2 * r}$.",
        )
    a, b, c, d, e = (_nonzero(rng, -9, 9) for _ in range(5))
    return (
        f"Find $\\lim_{{x \\to \\infty}} \\frac{{{tex_poly([a, b, c])}}}{{{tex_poly([d, 0, e])}}}$.",
        f"Divide numerator and denominator by $x^2$: the lower-order terms vanish as $x \\to \\infty$, "
        f"leaving $\\frac{{{a}}}{{{d}}} = {tex_num(Fraction(a, d))}$.",
    )


MATH_PROBLEMS: list[Callable[[Rng], tuple[str, str]]] = [
    p_linear,
    p_quadratic,
    p_derivative,
    p_integral,
    p_system,
    p_series,
    p_gcd,
    p_percent,
    p_matrix,
    p_probability,
    p_modexp,
    p_limit,
]

PAPER_POOLS: dict[str, Pool] = {
    "adj": [
        "sharp",
        "uniform",
        "effective",
        "quantitative",
        "asymptotic",
        "explicit",
        "stable",
        "local",
        "sparse",
        "weighted",
        "twisted",
        "generalized",
        "non-commutative",
        "discrete",
        "optimal",
    ],
    "objects": [
        "spectral gaps",
        "Sobolev inequalities",
        "eigenvalue estimates",
        "concentration inequalities",
        "mixing times",
        "cohomology groups",
        "height functions",
        "partition functions",
        "transport maps",
        "Dirichlet forms",
        "Hecke eigenvalues",
        "sieve weights",
        "Lyapunov exponents",
        "regularity estimates",
        "orbit counts",
        "Strichartz estimates",
        "isoperimetric profiles",
    ],
    "structure": [
        "hyperbolic surfaces",
        "expander graphs",
        "Banach lattices",
        "toric varieties",
        "random regular graphs",
        "polynomial rings",
        "Markov chains on finite groups",
        "Riemannian manifolds with boundary",
        "finite simple groups",
        "convex bodies",
        "elliptic curves",
        "simplicial complexes",
        "metric measure spaces",
        "Coxeter groups",
        "lattice polytopes",
        "Hilbert modular forms",
    ],
    "field": [
        "finite fields",
        "number fields",
        "global function fields",
        "the $p$-adic numbers",
        "$\\mathbb{Q}$",
        "imaginary quadratic fields",
        "totally real fields",
    ],
    "method": [
        "a multiscale decomposition",
        "the polynomial method",
        "an entropy increment argument",
        "a careful analysis of the heat kernel",
        "the circle method",
        "a transference principle",
        "a new monotonicity formula",
        "a variant of the Bourgain–Gamburd machine",
        "a stochastic coupling",
        "the theory of o-minimal structures",
        "a compactness argument",
    ],
    "author": lambda rng: rng.choice(LAST_NAMES),
    "kval": num(2, 7),
    "expo": lambda rng: rng.choice(
        [
            "\\frac{1}{2}",
            "\\frac{1}{3}",
            "\\frac{2}{3}",
            "\\frac{3}{4}",
            "\\frac{1}{4} + \\varepsilon",
            "1 - \\delta",
            "\\frac{5}{12}",
        ]
    ),
    "const": lambda rng: f"{rng.randint(1, 9)}.{rng.randint(0, 99):02d}",
    "yr": num(1968, 2021),
    "application": [
        "counting rational points of bounded height",
        "the stability of the Euler equations",
        "sampling from log-concave measures",
        "the distribution of prime geodesics",
        "property testing in sparse graphs",
        "the spectral theory of quantum graphs",
        "unique continuation for parabolic equations",
        "the sum-product phenomenon",
    ],
}

PAPER_TITLES = [
    "{adj_c} {objects} for {structure}",
    "On the {objects} of {structure} over {field}",
    "A {adj} approach to {application}",
    "{adj_c} bounds for {objects} and applications to {application}",
    "{objects_c}, {objects}, and {structure}",
    "Remarks on {objects} of {adj} {structure}",
]

PAPER_ABSTRACT = [
    "Let $X$ be one of the {structure} of dimension $d \\ge {kval}$, and let $\\mu$ denote its natural "
    "probability measure.",
    "We prove {adj} {objects} for {structure}, answering a question raised by {author} in {yr}.",
    "Our main theorem states that $\\lambda_1(X) \\ge c\\, n^{-{expo}}$ for an absolute constant $c > 0$, "
    "improving the previous exponent obtained by {author} and {author}.",
    "We show that $\\sum_{n \\le x} a_n = C x \\log x + O(x^{{expo}})$, where $C \\approx {const}$ is explicit.",
    "The proof combines {method} with {method}.",
    "In contrast to earlier work, our estimates are uniform in the parameter $q$ and do not require the "
    "Generalized Riemann Hypothesis.",
    "As an application we obtain new results on {application}.",
    "We also construct examples showing that the exponent ${expo}$ cannot be improved in general.",
    "Along the way we establish {adj} {objects} over {field}, which may be of independent interest.",
    "For every $\\varepsilon > 0$ there is $N_0(\\varepsilon)$ such that the bound holds for all $N \\ge N_0$.",
    "The key new ingredient is {method}, which allows us to control the error terms at every scale.",
    "Numerical experiments for $n \\le 10^{kval}$ agree with the predicted constant ${const}$ to three digits.",
]

PAPER_INTRO = [
    "The study of {objects} goes back at least to the work of {author} in {yr}.",
    "Since then, {objects} have been established for many classes of {structure}, but the {adj} regime "
    "has remained largely open.",
    "A natural model problem is to understand how the quantity $\\|f\\|_{L^p(\\mu)}$ behaves as $p \\to \\infty$.",
    "Heuristically one expects square-root cancellation, that is, a bound of the form $O(N^{1/2 + \\varepsilon})$.",
    "Our approach is different: we rely on {method} and avoid any appeal to {method}.",
    "We remark that the constant in Theorem 1.1 is effective, although we make no attempt to optimize it.",
    "The rest of the paper is organized as follows. Section 2 collects preliminaries on {structure}, "
    "Section 3 contains the main estimates, and Section 4 discusses {application}.",
    "Throughout, $A \\ll B$ means $|A| \\le C B$ for a constant $C$ depending only on $d$.",
    "We thank {author} for helpful conversations and the anonymous referee for many useful comments.",
]

MATH_TOPICS = [
    "Algebra",
    "Calculus I",
    "Discrete Mathematics",
    "Linear Algebra",
    "Number Theory",
    "Probability",
    "Precalculus",
    "Sequences and Series",
]


PAPER_POOLS["adj_c"] = [cap(w) for w in PAPER_POOLS["adj"]]  # type: ignore[union-attr]
PAPER_POOLS["objects_c"] = [cap(w) for w in PAPER_POOLS["objects"]]  # type: ignore[union-attr]


def paper_fill(rng: Rng, template: str) -> str:
    return fill(rng, template, PAPER_POOLS)


def math_paper(rng: Rng) -> str:
    title = paper_fill(rng, rng.choice(PAPER_TITLES))
    authors = ", ".join(person(rng) for _ in range(rng.randint(1, 4)))
    abstract = " ".join(paper_fill(rng, t) for t in ordered(rng, PAPER_ABSTRACT, 4, 7))
    out = [f"Title: {title}", f"Authors: {authors}", f"Abstract: {abstract}"]
    if rng.random() < 0.7:
        intro = " ".join(paper_fill(rng, t) for t in ordered(rng, PAPER_INTRO, 3, 6))
        k = rng.randint(2, 6)
        thm = paper_fill(
            rng,
            f"\\textbf{{Theorem 1.1.}} Let $d \\ge {k}$ and let $X$ be one of the {{structure}}. "
            f"Then for all $N \\ge 1$ we have $\\#\\{{x \\in X : h(x) \\le N\\}} = c_X N^{{{k}}} "
            f"+ O(N^{{{k} - {{expo}}}})$.",
        )
        out += ["1. Introduction", intro, thm]
        if rng.random() < 0.5:
            p, q = rng.randint(2, 6), rng.randint(2, 6)
            out.append(
                f"\\emph{{Proof sketch.}} Write $f = f_{{\\le N}} + f_{{> N}}$. By Hölder's inequality "
                f"with exponents ${p}$ and $\\frac{{{p}}}{{{p - 1}}}$, the first term is bounded by "
                f"$N^{{1/{p}}} \\|f\\|_{{{q}}}$, while the second is handled by "
                + paper_fill(rng, "{method}")
                + ". Summing over dyadic scales completes the proof. $\\square$"
            )
    return "\n\n".join(out)


def problem_set(rng: Rng, start: int = 1, count: int | None = None) -> str:
    count = count or rng.randint(2, 5)
    parts = [f"## {rng.choice(MATH_TOPICS)} — Worked Exercises (Set {rng.randint(1, 40)})"]
    for i in range(start, start + count):
        stmt, sol = rng.choice(MATH_PROBLEMS)(rng)
        parts.append(f"**Problem {i}.** {stmt}\n\n*Solution.* {sol}")
    return "\n\n".join(parts)


def gen_math(rng: Rng, target: int) -> str:
    if target < 400:
        stmt, sol = rng.choice(MATH_PROBLEMS)(rng)
        return f"{stmt}\n\nSolution: {sol}"
    if rng.random() < 0.4:
        return grow(target, lambda: math_paper(rng), lambda: problem_set(rng))
    numbering = iter(range(1, 10_000))
    first = problem_set(rng, 1, count := rng.randint(2, 5))
    for _ in range(count):
        next(numbering)

    def more() -> str:
        stmt, sol = rng.choice(MATH_PROBLEMS)(rng)
        return f"**Problem {next(numbering)}.** {stmt}\n\n*Solution.* {sol}"

    return grow(target, lambda: first, more)


# ============================================================================= code

ENTITIES = [
    "order",
    "invoice",
    "sensor",
    "reading",
    "user",
    "session",
    "packet",
    "ticket",
    "shipment",
    "account",
    "job",
    "task",
    "record",
    "event",
    "metric",
    "device",
    "route",
    "batch",
    "frame",
    "booking",
]
NUM_FIELDS = [
    "amount",
    "score",
    "weight",
    "latency_ms",
    "duration",
    "price",
    "quantity",
    "temperature",
    "size_kb",
]
KEY_FIELDS = ["region", "status", "owner", "category", "country", "channel", "team", "kind"]
PY_COMMENTS = [
    "# keep this cheap: it runs once per request",
    "# TODO: move the threshold into config",
    "# order matters here, see the changelog",
    "# sorted for stable output in tests",
    "# guard against a zero division on empty input",
    "# the upstream API sometimes sends strings",
    "# NOTE: intentionally not thread-safe",
    "# fast path for the common case",
]


def _names(rng: Rng) -> dict[str, object]:
    ent = rng.choice(ENTITIES)
    return {
        "ent": ent,
        "Ent": camel(ent),
        "NUM": rng.choice(NUM_FIELDS),
        "KEY": rng.choice(KEY_FIELDS),
        "N": rng.randint(2, 64),
        "M": rng.randint(100, 5000),
        "DP": rng.randint(1, 4),
        "CMT": rng.choice(PY_COMMENTS),
        "VER": rng.randint(1, 4),
        "DELAY": rng.choice([100, 250, 500, 1000]),
        "PORT": rng.choice([8000, 8080, 5000, 3000, 9090]),
        "TABLE": ent + "s",
    }


PY_TEMPLATES = [
    '''def summarize_@@ent@@s_by_@@KEY@@(rows: list[dict[str, object]], min_@@NUM@@: float = @@N@@.0) -> dict[str, dict]:
    """Group @@ent@@s by `@@KEY@@` and return count, total and mean `@@NUM@@` per group."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        value = float(row.get("@@NUM@@", 0.0))
        if value < min_@@NUM@@:
            continue
        key = str(row.get("@@KEY@@") or "unknown")
        groups.setdefault(key, []).append(value)
    summary = {}
    for key, values in sorted(groups.items()):  # sorted for stable output
        total = sum(values)
        summary[key] = {"count": len(values), "total": round(total, @@DP@@), "mean": round(total / len(values), @@DP@@)}
    return summary
''',
    '''class @@Ent@@Cache:
    """A tiny LRU cache for @@ent@@ lookups; evicts the least recently used entry."""

    def __init__(self, capacity: int = @@M@@) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._data: OrderedDict[str, dict] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        if key not in self._data:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return self._data[key]

    def put(self, key: str, value: dict) -> None:
        @@CMT@@
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
''',
    '''@dataclass(frozen=True)
class @@Ent@@:
    @@ent@@_id: int
    @@KEY@@: str
    @@NUM@@: float


def parse_@@ent@@_line(line: str, lineno: int = 0) -> @@Ent@@:
    """Parse 'id;@@KEY@@;@@NUM@@' into a @@Ent@@, with an error that names the line."""
    parts = [p.strip() for p in line.split(";")]
    if len(parts) != 3:
        raise ValueError(f"line {lineno}: expected 3 fields, got {len(parts)}")
    try:
        return @@Ent@@(int(parts[0]), parts[1], float(parts[2]))
    except ValueError as exc:
        raise ValueError(f"line {lineno}: {exc}") from None


def load_@@ent@@s(path: str) -> list[@@Ent@@]:
    with open(path, encoding="utf-8") as fh:
        return [parse_@@ent@@_line(line, i) for i, line in enumerate(fh, 1) if line.strip()]
''',
    '''def moving_average(values: Iterable[float], window: int = @@N@@) -> Iterator[float]:
    """Yield the mean of the last `window` values; the first few use a shorter window."""
    if window < 1:
        raise ValueError("window must be >= 1")
    buf: deque[float] = deque(maxlen=window)
    running = 0.0
    for v in values:
        if len(buf) == window:
            running -= buf[0]
        buf.append(v)
        running += v
        yield running / len(buf)
''',
    """def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Count @@ent@@s per @@KEY@@ in a CSV export.")
    parser.add_argument("csv_path")
    parser.add_argument("--top", type=int, default=@@N@@, help="how many groups to print")
    parser.add_argument("--min-@@NUM@@", type=float, default=0.0)
    args = parser.parse_args(argv)

    counts: Counter[str] = Counter()
    with open(args.csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if float(row.get("@@NUM@@") or 0) >= args.min_@@NUM@@:
                counts[row["@@KEY@@"]] += 1
    for key, count in counts.most_common(args.top):
        print(f"{key:<20} {count:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
""",
    '''async def fetch_@@ent@@(client: httpx.AsyncClient, @@ent@@_id: int, retries: int = @@VER@@) -> dict:
    """GET one @@ent@@, retrying 5xx responses with exponential backoff."""
    delay = @@DELAY@@ / 1000
    for attempt in range(retries + 1):
        resp = await client.get(f"/v@@VER@@/@@ent@@s/{@@ent@@_id}")
        if resp.status_code < 500:
            resp.raise_for_status()
            return resp.json()
        if attempt < retries:
            await asyncio.sleep(delay * 2**attempt)
    raise RuntimeError(f"@@ent@@ {@@ent@@_id}: gave up after {retries + 1} attempts")
''',
    '''def merge_sort(items: list[int]) -> list[int]:
    """Stable merge sort; returns a new list."""
    if len(items) <= 1:
        return list(items)
    mid = len(items) // 2
    left, right = merge_sort(items[:mid]), merge_sort(items[mid:])
    out: list[int] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


def test_merge_sort_matches_sorted() -> None:
    rng = random.Random(@@M@@)
    for _ in range(@@N@@):
        data = [rng.randint(-100, 100) for _ in range(rng.randint(0, 50))]
        assert merge_sort(data) == sorted(data)
''',
    '''def chunked(iterable: Iterable[T], size: int = @@N@@) -> Iterator[list[T]]:
    """Split an iterable into lists of at most `size` items (the last one may be shorter)."""
    it = iter(iterable)
    while batch := list(itertools.islice(it, size)):
        yield batch


def upload_@@ent@@s(@@ent@@s: Sequence[dict], send: Callable[[list[dict]], None]) -> int:
    sent = 0
    for batch in chunked(@@ent@@s, @@N@@):
        @@CMT@@
        send(batch)
        sent += len(batch)
        log.debug("uploaded %d/%d @@ent@@s", sent, len(@@ent@@s))
    return sent
''',
    '''def flatten(obj: object, prefix: str = "", sep: str = ".") -> dict[str, object]:
    """Flatten nested dicts/lists into dotted keys: {"a": {"b": [1]}} -> {"a.b.0": 1}."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{sep}{i}" if prefix else str(i), sep))
    else:
        out[prefix] = obj
    return out
''',
]
PY_IMPORTS = [
    "import argparse",
    "import asyncio",
    "import csv",
    "import itertools",
    "import logging",
    "import random",
    "import sys",
    "from collections import Counter, OrderedDict, deque",
    "from collections.abc import Callable, Iterable, Iterator, Sequence",
    "from dataclasses import dataclass",
    "from typing import TypeVar",
    "import httpx",
]

C_TEMPLATES = [
    """typedef struct {
    uint32_t id;
    int32_t @@NUM@@;
    char @@KEY@@[@@N@@];
} @@ent@@_t;

/* Sum the @@NUM@@ field; returns 0 for an empty array. */
int64_t @@ent@@_total(const @@ent@@_t *items, size_t n)
{
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += items[i].@@NUM@@;
    }
    return total;
}
""",
    """#define RING_CAP @@M@@

typedef struct {
    uint8_t buf[RING_CAP];
    size_t head;
    size_t tail;
    size_t count;
} ring_t;

int ring_push(ring_t *r, uint8_t byte)
{
    if (r->count == RING_CAP)
        return -1; /* full: caller decides whether to drop */
    r->buf[r->head] = byte;
    r->head = (r->head + 1) % RING_CAP;
    r->count++;
    return 0;
}

int ring_pop(ring_t *r, uint8_t *out)
{
    if (r->count == 0)
        return -1;
    *out = r->buf[r->tail];
    r->tail = (r->tail + 1) % RING_CAP;
    r->count--;
    return 0;
}
""",
    """/* Trim leading and trailing whitespace in place; returns the new start. */
char *str_trim(char *s)
{
    char *end;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '\\0')
        return s;
    end = s + strlen(s) - 1;
    while (end > s && isspace((unsigned char)*end))
        end--;
    end[1] = '\\0';
    return s;
}
""",
    """void matmul_@@N@@(const double *a, const double *b, double *c, int n)
{
    /* naive O(n^3) multiply, row-major; c must not alias a or b */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            double acc = 0.0;
            for (int k = 0; k < n; k++)
                acc += a[i * n + k] * b[k * n + j];
            c[i * n + j] = acc;
        }
    }
}
""",
    """uint32_t checksum_@@ent@@(const uint8_t *data, size_t len)
{
    uint32_t a = 1, b = 0;
    const uint32_t MOD = 65521;
    for (size_t i = 0; i < len; i++) {
        a = (a + data[i]) % MOD;
        b = (b + a) % MOD;
    }
    return (b << 16) | a;
}
""",
    """struct node {
    int value;
    struct node *next;
};

struct node *list_push(struct node *head, int value)
{
    struct node *n = malloc(sizeof *n);
    if (!n) {
        perror("malloc");
        exit(EXIT_FAILURE);
    }
    n->value = value;
    n->next = head;
    return n;
}

void list_free(struct node *head)
{
    while (head) {
        struct node *next = head->next;
        free(head);
        head = next;
    }
}
""",
    """int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [LIMIT]\\n", argv[0]);
        return 2;
    }
    long limit = argc > 2 ? strtol(argv[2], NULL, 10) : @@M@@;
    FILE *fp = fopen(argv[1], "r");
    if (!fp) {
        perror(argv[1]);
        return 1;
    }
    char line[@@N@@0];
    long n = 0;
    while (fgets(line, sizeof line, fp) && n < limit)
        n++;
    fclose(fp);
    printf("%ld lines\\n", n);
    return 0;
}
""",
]
C_INCLUDES = [
    "#include <stdio.h>",
    "#include <stdlib.h>",
    "#include <string.h>",
    "#include <stdint.h>",
    "#include <ctype.h>",
    "#include <stddef.h>",
]

JS_TEMPLATES = [
    """/**
 * Fetch all @@ent@@s from the API, following pagination and retrying 5xx errors.
 * @param {string} baseUrl
 * @returns {Promise<object[]>}
 */
export async function fetch@@Ent@@s(baseUrl, { retries = @@VER@@, pageSize = @@N@@ } = {}) {
  const results = [];
  for (let page = 1; ; page++) {
    const url = `${baseUrl}/v@@VER@@/@@ent@@s?page=${page}&limit=${pageSize}`;
    let response;
    for (let attempt = 0; attempt <= retries; attempt++) {
      response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.status < 500) break;
      await new Promise((resolve) => setTimeout(resolve, @@DELAY@@ * 2 ** attempt));
    }
    if (!response.ok) throw new Error(`GET ${url} failed with ${response.status}`);
    const body = await response.json();
    results.push(...body.items);
    if (body.items.length < pageSize) return results;
  }
}
""",
    """function debounce(fn, waitMs = @@DELAY@@) {
  let timer = null;
  return function debounced(...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), waitMs);
  };
}

const search = document.querySelector("#@@ent@@-search");
search.addEventListener(
  "input",
  debounce((event) => {
    const q = event.target.value.trim().toLowerCase();
    for (const row of document.querySelectorAll(".@@ent@@-row")) {
      row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
    }
  }),
);
""",
    """class @@Ent@@Store {
  #items = new Map();

  add(@@ent@@) {
    if (!@@ent@@.id) throw new TypeError("@@ent@@ needs an id");
    this.#items.set(@@ent@@.id, { ...@@ent@@, updatedAt: Date.now() });
    return this;
  }

  totalBy@@KEY@@() {
    const totals = {};
    for (const item of this.#items.values()) {
      totals[item.@@KEY@@] = (totals[item.@@KEY@@] ?? 0) + Number(item.@@NUM@@ || 0);
    }
    return totals;
  }

  get size() {
    return this.#items.size;
  }
}
""",
    """const top@@Ent@@s = (rows, n = @@N@@) =>
  rows
    .filter((r) => r.@@NUM@@ != null && r.status !== "deleted")
    .map((r) => ({ ...r, @@NUM@@: Number(r.@@NUM@@) }))
    .sort((a, b) => b.@@NUM@@ - a.@@NUM@@)
    .slice(0, n);

console.log(top@@Ent@@s(data).map((r) => `${r.id}\\t${r.@@NUM@@.toFixed(@@DP@@)}`).join("\\n"));
""",
    """app.get("/api/v@@VER@@/@@ent@@s/:id", async (req, res, next) => {
  try {
    const id = Number.parseInt(req.params.id, 10);
    if (Number.isNaN(id)) {
      return res.status(400).json({ error: "id must be an integer" });
    }
    const row = await db.get@@Ent@@(id);
    if (!row) return res.status(404).json({ error: `@@ent@@ ${id} not found` });
    res.set("Cache-Control", "max-age=@@N@@");
    return res.json(row);
  } catch (err) {
    next(err);
  }
});

app.listen(@@PORT@@, () => console.log("listening on :@@PORT@@"));
""",
]

SQL_TEMPLATES = [
    """CREATE TABLE @@TABLE@@ (
    id           BIGSERIAL PRIMARY KEY,
    @@KEY@@       TEXT NOT NULL,
    @@NUM@@       NUMERIC(12, @@DP@@) NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at   TIMESTAMPTZ
);

CREATE INDEX idx_@@TABLE@@_@@KEY@@ ON @@TABLE@@ (@@KEY@@) WHERE deleted_at IS NULL;
""",
    """SELECT t.@@KEY@@,
       COUNT(*)            AS n,
       SUM(t.@@NUM@@)       AS total_@@NUM@@,
       AVG(t.@@NUM@@)       AS mean_@@NUM@@
FROM @@TABLE@@ AS t
JOIN accounts AS a ON a.id = t.account_id
WHERE t.created_at >= DATE '@@DATE@@'
  AND a.active
GROUP BY t.@@KEY@@
HAVING COUNT(*) > @@N@@
ORDER BY total_@@NUM@@ DESC
LIMIT @@N@@;
""",
    """WITH ranked AS (
    SELECT id,
           @@KEY@@,
           @@NUM@@,
           ROW_NUMBER() OVER (PARTITION BY @@KEY@@ ORDER BY @@NUM@@ DESC) AS rn
    FROM @@TABLE@@
    WHERE deleted_at IS NULL
)
SELECT @@KEY@@, id, @@NUM@@
FROM ranked
WHERE rn <= @@VER@@
ORDER BY @@KEY@@, rn;
""",
    """UPDATE @@TABLE@@
SET status = 'archived',
    updated_at = now()
WHERE status = 'closed'
  AND updated_at < now() - INTERVAL '@@N@@ days';
""",
    """INSERT INTO @@TABLE@@ (@@KEY@@, @@NUM@@, created_at) VALUES
@@ROWS@@;
""",
]

SH_TEMPLATES = [
    """#!/usr/bin/env bash
set -euo pipefail

# Nightly backup of the @@ent@@ service data directory.
SRC="${SRC:-/var/lib/@@ent@@-svc}"
DEST="${DEST:-/backups/@@ent@@}"
KEEP_DAYS=@@N@@
stamp="$(date +%Y%m%d-%H%M%S)"

mkdir -p "$DEST"
tar -czf "$DEST/@@ent@@-$stamp.tar.gz" -C "$SRC" .
find "$DEST" -name '@@ent@@-*.tar.gz' -mtime +"$KEEP_DAYS" -delete
echo "backup written to $DEST/@@ent@@-$stamp.tar.gz"
""",
    """for f in /var/log/@@ent@@/*.log; do
    [ -e "$f" ] || continue
    size=$(stat -c %s "$f")
    if [ "$size" -gt $(( @@M@@ * 1024 )) ]; then
        gzip -9 "$f" && echo "compressed $f ($size bytes)"
    fi
done
""",
    """usage() { echo "usage: $0 [-n COUNT] [-v] HOST" >&2; exit 2; }

count=@@N@@
verbose=0
while getopts "n:vh" opt; do
    case "$opt" in
        n) count="$OPTARG" ;;
        v) verbose=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
""",
    """wait_healthy() {
    local url="http://localhost:@@PORT@@/healthz" tries=0
    until curl -fsS "$url" >/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge @@N@@ ]; then
            echo "service did not become healthy after $tries tries" >&2
            return 1
        fi
        sleep 2
    done
    echo "healthy after $tries retries"
}
""",
    """grep -E ' (5[0-9]{2}) ' access.log \\
    | awk '{print $7}' \\
    | sort | uniq -c | sort -rn | head -n @@N@@ > top-errors-@@ent@@.txt
wc -l top-errors-@@ent@@.txt
""",
]


def code_unit(rng: Rng, lang: str) -> str:
    kw = _names(rng)
    kw["DATE"] = date(rng)
    if lang == "python":
        return code(rng.choice(PY_TEMPLATES), **kw)
    if lang == "c":
        return code(rng.choice(C_TEMPLATES), **kw)
    if lang == "javascript":
        return code(rng.choice(JS_TEMPLATES), **kw)
    if lang == "sql":
        rows = ",\n".join(
            f"    ('{rng.choice(KEY_FIELDS)}-{rng.randint(1, 99)}', {rng.randint(1, 9999)}.{rng.randint(0, 99):02d}, "
            f"'{date(rng)} {clock(rng)}')"
            for _ in range(rng.randint(2, 8))
        )
        kw["ROWS"] = rows
        return code(rng.choice(SQL_TEMPLATES), **kw)
    return code(rng.choice(SH_TEMPLATES), **kw)


def code_header(rng: Rng, lang: str) -> str:
    desc = rng.choice(
        [
            "helpers for the nightly import job",
            "utility functions, see README for usage",
            "service glue code",
            "small tools used by the reporting pipeline",
            "prototype; not reviewed yet",
            "data access layer",
        ]
    )
    if lang == "python":
        imports = sorted(rng.sample(PY_IMPORTS, rng.randint(3, 7)))
        return f'"""{cap(desc)}."""\n\nfrom __future__ import annotations\n\n' + "\n".join(imports) + "\n"
    if lang == "c":
        return f"/* {desc} */\n" + "\n".join(sorted(rng.sample(C_INCLUDES, rng.randint(2, 5)))) + "\n"
    if lang == "javascript":
        return f'// {desc}\n"use strict";\n'
    if lang == "sql":
        return f"-- {desc}\n-- generated schema v{rng.randint(1, 30)}\n"
    return f"# {desc}\n"


def gen_code(rng: Rng, target: int) -> str:
    lang = rng.choices(["python", "c", "javascript", "sql", "shell"], [35, 15, 20, 15, 15])[0]
    if target < 300:
        kw = _names(rng)
        kw["K"] = rng.randint(2, 16)
        snippets = {
            "python": "@@CMT@@\ntotal = sum(x.@@NUM@@ for x in @@ent@@s if x.@@KEY@@)\n"
            'mean = total / max(len(@@ent@@s), 1)\nprint(f"@@ent@@s={len(@@ent@@s)} total={total:.@@DP@@f} '
            'mean={mean:.@@DP@@f}")',
            "c": "/* xor-mask the @@ent@@ buffer in place */\nfor (size_t i = 0; i < @@N@@; i++) {\n"
            "    buf[i] ^= key[i % @@K@@];\n}\nreturn buf[0] == 0 ? -1 : 0;",
            "javascript": "// ids of @@ent@@s that have a @@KEY@@\nconst ids = rows\n  .filter((r) => r.@@KEY@@ && r.@@NUM@@ > @@N@@)"
            "\n  .map((r) => r.id);\nconsole.log(`${ids.length} @@ent@@s`);",
            "sql": "SELECT @@KEY@@, COUNT(*) AS n\nFROM @@TABLE@@\nWHERE created_at > now() - INTERVAL '@@N@@ days'\n"
            "GROUP BY @@KEY@@\nORDER BY n DESC;",
            "shell": "# largest @@ent@@ logs\ndu -sh /var/log/@@ent@@/* 2>/dev/null | sort -h | tail -n @@N@@\n"
            'echo "checked $(ls /var/log/@@ent@@ | wc -l) files"',
        }
        return code(snippets[lang], **kw)
    if rng.random() < 0.2:
        # a markdown answer with a fenced block, as seen in docs and Q&A pages
        name = {"c": "C", "javascript": "JavaScript", "sql": "SQL", "python": "Python"}.get(lang, lang)
        intro = f"Here is a small {name} example that {rng.choice(['handles the edge cases', 'is easy to test', 'avoids a global state', 'keeps the I/O separate'])}:"
        body = grow(target - 200, lambda: code_unit(rng, lang), lambda: code_unit(rng, lang), "\n")
        fence = {"javascript": "js", "shell": "bash"}.get(lang, lang)
        return f"{intro}\n\n```{fence}\n{body}```\n\nThe important part is the error handling; the rest is boilerplate."
    return grow(target, lambda: code_header(rng, lang), lambda: code_unit(rng, lang), "\n\n")


# ============================================================================= web

HOBBIES: dict[str, dict[str, list[str]]] = {
    "gardening": {
        "activity": [
            "repotting the tomato seedlings",
            "building a raised bed",
            "pruning the old apple tree",
            "starting a compost heap",
        ],
        "thing": ["the vegetable patch", "my balcony garden", "the herb planter"],
        "tool": ["pruning shears", "soil moisture meter", "watering can", "garden fork"],
        "problem": ["aphids", "overwatering", "clay soil", "late frost"],
    },
    "cycling": {
        "activity": [
            "riding the coastal loop",
            "replacing the chain",
            "training for a century ride",
            "commuting by bike all winter",
        ],
        "thing": ["my old steel touring bike", "the gravel bike", "the commute"],
        "tool": ["chain checker", "torque wrench", "bike computer", "floor pump"],
        "problem": ["flat tyres", "headwinds", "a squeaky bottom bracket", "knee pain"],
    },
    "baking": {
        "activity": [
            "baking sourdough",
            "laminating croissant dough",
            "making rye bread",
            "testing gluten-free recipes",
        ],
        "thing": ["the starter", "the loaf", "the crumb"],
        "tool": ["Dutch oven", "kitchen scale", "bench scraper", "proofing basket"],
        "problem": ["dense crumb", "under-proofing", "a sticky dough", "burnt bottoms"],
    },
    "photography": {
        "activity": [
            "shooting street photos at dawn",
            "learning manual focus",
            "printing my own photos",
            "photographing birds in flight",
        ],
        "thing": ["the prime lens", "my photo archive", "the old film camera"],
        "tool": ["tripod", "light meter", "polarizing filter", "remote shutter"],
        "problem": ["motion blur", "blown highlights", "dust on the sensor", "noisy shadows"],
    },
    "home repair": {
        "activity": [
            "fixing the leaking kitchen tap",
            "patching drywall",
            "re-grouting the bathroom",
            "insulating the attic",
        ],
        "thing": ["the hallway", "the bathroom", "the old window frames"],
        "tool": ["stud finder", "oscillating saw", "caulking gun", "spirit level"],
        "problem": ["damp patches", "stripped screws", "uneven walls", "a stuck valve"],
    },
    "running": {
        "activity": [
            "training for a half marathon",
            "running hill repeats",
            "trying trail running",
            "running before work",
        ],
        "thing": ["my training plan", "the long run", "the new shoes"],
        "tool": ["heart-rate strap", "running watch", "foam roller", "hydration vest"],
        "problem": ["shin splints", "side stitches", "pacing", "motivation"],
    },
    "woodworking": {
        "activity": [
            "building a bookshelf",
            "carving spoons",
            "restoring a chair",
            "cutting dovetail joints by hand",
        ],
        "thing": ["the workbench", "the walnut offcuts", "the finish"],
        "tool": ["block plane", "marking gauge", "chisel set", "track saw"],
        "problem": ["tear-out", "glue squeeze-out", "warped boards", "blotchy stain"],
    },
}
BLOG_FILL: dict[str, list[str]] = {
    "flaw": [
        "badly calibrated",
        "made of cheaper plastic than the photos suggested",
        "missing a crucial part",
        "far too heavy for the job",
    ],
    "result": [
        "better than I expected",
        "a bit rough around the edges",
        "surprisingly professional",
        "passable",
    ],
    "feeling": ["tired but happy", "quietly proud", "frustrated and covered in dust", "ready for a long nap"],
}
BLOG_SENTENCES = [
    "Last {weekday} I finally got around to {activity}, something I had been putting off since {month}.",
    "If you have followed this blog for a while, you know that {thing} has been my obsession for about {small} years.",
    "The short version: it went better than expected, but not without a few surprises.",
    "My first mistake was trusting the {tool} I bought on sale, which turned out to be {flaw}.",
    "{first} from the {town} club suggested a different approach, and honestly it made all the difference.",
    "Here is what I changed: I slowed down, measured everything twice, and kept notes in a cheap notebook.",
    "After roughly {num} attempts I noticed a pattern: {problem} only showed up when I rushed the early steps.",
    "A few readers asked about cost, so here is the honest breakdown: about {price} for the {tool}, plus small parts.",
    "I am not an expert, and I would love to hear how others deal with {problem}.",
    "The weather in {town} did not cooperate either; it rained for {small} days straight.",
    "By the end of the afternoon {thing} looked {result}, and I was {feeling}.",
    "One tip I wish someone had told me earlier: never skip the boring preparation.",
    "Next month I want to try {activity} again, this time with a proper plan and fewer shortcuts.",
    "If you are just starting out, do not buy an expensive {tool} yet; learn what you actually need first.",
    "Comment below with your own stories, the weirder the better.",
    "I took photos at every step and will post them in a follow-up once I sort through them.",
    "It is funny how a hobby that started as a way to relax turned into spreadsheets and late-night research.",
    "Looking back at my notes from {month}, the difference is pretty obvious.",
    "The biggest surprise was how much {problem} depends on temperature and patience.",
    "Total time spent: about {small} hours, not counting two trips to the hardware store.",
    'My partner has started calling {thing} "the project", which tells you how long this has taken.',
    "I asked in three online groups about {problem} and got four contradictory answers.",
]
BLOG_TITLES = [
    "What {num} weekends of {activity} taught me",
    "Notes on {activity}",
    "Why I stopped worrying about {problem}",
    "A beginner's log: {activity}",
    "The {tool} I regret buying (and the one I don't)",
    "Month {small}: still {activity}",
]

NEWS_POOLS: dict[str, Pool] = {
    "project": [
        "a new footbridge over the river",
        "the renovation of the central library",
        "a pilot program for free weekend buses",
        "an expansion of the harbour car park",
        "a network of protected cycle lanes",
        "a community solar farm on the old landfill",
        "the conversion of the bus depot into housing",
    ],
    "feature": [
        "wider pavements",
        "two new playgrounds",
        "rain gardens along the main road",
        "a public workshop space",
        "extended opening hours",
        "step-free access at every entrance",
        "around {num} new street trees",
    ],
    "official": lambda rng: f"councillor {person(rng)}",
    "committee": ["finance", "transport", "planning", "environment", "housing"],
    "alt": ["road maintenance", "school repairs", "the ageing water mains", "youth services"],
    "concern": ["parking", "noise during construction", "the loss of green space", "rising rents", "traffic"],
    "org": lambda rng: rng.choice(
        [
            "the Residents' Association",
            "the Chamber of Commerce",
            "the regional transit agency",
            "the local university's survey unit",
            "the Heritage Trust",
        ]
    ),
    "quote": [
        "This is the kind of investment our neighbourhoods have been waiting for",
        "We listened to residents and changed the plan three times",
        "Nobody is pretending this will be cheap or quick",
        "We will be watching the budget very closely",
        "The numbers simply do not add up yet",
        "It is a good start, but only a start",
    ],
    "money": lambda rng: f"{rng.randint(2, 95)}.{rng.randint(1, 9)} million",
    "vote": lambda rng: f"{rng.randint(5, 11)} to {rng.randint(1, 4)}",
    "day": num(1, 28),
    "other_town": town,
}
NEWS_SENTENCES = [
    "The {town} city council voted {vote} on {weekday} to approve {project}, ending a debate that began nearly "
    "{small} years ago.",
    "The plan, expected to cost about {money}, includes {feature} and {feature}.",
    '"{quote}," said {official}, who chairs the council\'s {committee} committee.',
    "Critics argued that the money would be better spent on {alt}.",
    "Construction is scheduled to begin in {month} and to last roughly {small} months.",
    "Residents at the meeting were divided; several spoke in favour, while others raised concerns about {concern}.",
    "According to a survey commissioned by {org}, {pct} percent of households support the proposal.",
    "{org} said it would publish a detailed timeline next week.",
    "A similar scheme in neighbouring {other_town} came in {pct} percent over budget, opponents noted.",
    "The mayor's office did not respond to a request for comment by the time of publication.",
    "Local business owners told reporters they were cautiously optimistic.",
    '"{quote}," added {person}, a resident who has lived in the area for {num} years.',
    "Officials estimate that the work will affect around {big} commuters each day.",
    "The decision can still be challenged during a {small}-week consultation period.",
]
NEWS_HEADLINES = [
    "{town} council approves {project}",
    "Debate continues over {project} in {town}",
    "Residents split on {project}",
    "{town} to start work on {project} in {month}",
]

FORUM_POOLS: dict[str, Pool] = {
    "device": [
        "laptop",
        "router",
        "dishwasher",
        "e-bike",
        "3D printer",
        "gaming console",
        "espresso machine",
    ],
    "symptom": [
        "makes a clicking noise",
        "restarts every evening",
        "gets very hot after {num} minutes",
        "shows error E{small}{small}",
        "loses its settings after a power cut",
        "is slow to start",
    ],
    "fix": [
        "updating the firmware",
        "resetting it to factory settings",
        "cleaning the fan",
        "replacing the power adapter",
        "moving it away from the wall",
        "checking the fuse",
        "turning off the power-saving mode",
    ],
}
FORUM_REPLIES = [
    "Had the same issue last year. In my case {fix} solved it.",
    "Have you tried {fix}? Sounds silly, but it works more often than you would think.",
    "What model is it exactly? Some batches from {year} had a known fault.",
    "+1, following this thread.",
    "Mine {symptom} too, but only when the room is warm.",
    "Honestly, if it is still under warranty, send it back. Not worth the hassle.",
    "I would start by {fix}, then see if the problem comes back.",
    "Can you post a photo of the label on the back?",
    "This is normal behaviour according to the manual, page {num}.",
    "Don't open it yourself unless you know what you are doing; there are capacitors in there.",
]


def web_blog(rng: Rng, target: int) -> str:
    hobby = HOBBIES[rng.choice(sorted(HOBBIES))]
    pools: dict[str, Pool] = {**COMMON, **hobby, **BLOG_FILL}
    head = (
        f"# {cap(fill(rng, rng.choice(BLOG_TITLES), pools))}\n\nPosted on {rng.choice(MONTHS)} "
        f"{rng.randint(1, 28)}, {rng.randint(2012, 2024)} by {rng.choice(HANDLE_A)}_{rng.choice(HANDLE_B)}"
    )

    def para() -> str:
        parts = sentences(rng, BLOG_SENTENCES, pools, rng.randint(3, 6))
        if rng.random() < 0.6:
            parts.insert(rng.randint(0, len(parts)), commentary(rng))
        return " ".join(parts)

    return grow(target, lambda: head + "\n\n" + para(), para)


def web_news(rng: Rng, target: int) -> str:
    place = town(rng)
    pools: dict[str, Pool] = {**COMMON, **NEWS_POOLS}
    head = fill(rng, rng.choice(NEWS_HEADLINES), pools, {"town": place})
    lead = f"{place.upper()}, {rng.choice(MONTHS)} {rng.randint(1, 28)} — "

    def para() -> str:
        return paragraph(rng, NEWS_SENTENCES, pools, 2, 4, {"town": place})

    return grow(target, lambda: f"{head}\n\n{lead}{para()}", para)


def web_forum(rng: Rng, target: int) -> str:
    pools: dict[str, Pool] = {**COMMON, **FORUM_POOLS}
    device = rng.choice(FORUM_POOLS["device"])  # type: ignore[arg-type]
    op = handle(rng)
    q = fill(rng, f"My {device} {{symptom}} — normal?", pools)
    body = (
        f"Thread: {q}\n\n{op} wrote:\nBought it about {rng.randint(2, 30)} months ago. "
        f"{fill(rng, 'Since last {weekday} it {symptom}. ', pools)}"
        f"I already tried {fill(rng, '{fix}', pools)}, no luck. Any ideas?"
    )
    replies = 0

    def reply() -> str:
        nonlocal replies
        replies += 1
        who = op if replies % 4 == 0 else handle(rng)
        text = " ".join(fill(rng, t, pools) for t in rng.sample(FORUM_REPLIES, rng.randint(1, 3)))
        if who == op:
            text = f"Update: tried {fill(rng, '{fix}', pools)}. " + rng.choice(
                [
                    "Seems better so far, thanks all!",
                    "Still the same, unfortunately.",
                    "Now it is worse, lol.",
                ]
            )
        likes = rng.randint(0, 40)
        return f"Reply #{replies} by {who} ({likes} likes):\n{text}"

    return grow(target, lambda: body, reply)


REVIEW_PRODUCTS = [
    "wireless headphones",
    "espresso machine",
    "hiking backpack",
    "standing desk",
    "electric kettle",
    "mechanical keyboard",
    "robot vacuum",
    "rain jacket",
    "air fryer",
    "e-reader",
    "office chair",
    "camping stove",
]
REVIEW_BRANDS = [
    "Norvik",
    "Altaro",
    "Brightline",
    "Kestrel",
    "Oakmont",
    "Velto",
    "Quillon",
    "Marrow & Finch",
    "Zephra",
]
REVIEW_SENTENCES = [
    "I bought the {brand} {product} after my old one died, and after {small} weeks of daily use I have mixed feelings.",
    "Build quality is {quality}; the {part} feels solid but the {part} creaks a little.",
    "Setup took about {small} minutes, most of it spent hunting for the manual.",
    "For the price ({price}) I expected {expectation}.",
    "Customer support replied within {small} days and sent a replacement {part} for free.",
    "Would I buy it again? Probably, but I would wait for a sale.",
    "The {part} is the weak point; mine started to wobble after a month.",
    "It is noticeably quieter than the model it replaced.",
    "My only real complaint is the {part}, which is awkward to reach.",
    "The instructions are vague, but there are decent video guides online.",
    "Packaging was excessive: {small} layers of plastic for one small box.",
    "I compared it with two competitors in the shop, and this one felt the most {quality}.",
]
REVIEW_POOLS: dict[str, Pool] = {
    "quality": ["excellent", "fine", "mediocre", "better than expected", "solid", "a bit flimsy"],
    "part": ["lid", "handle", "button", "hinge", "strap", "base", "cable", "zip", "display", "charging port"],
    "expectation": [
        "a bit more polish",
        "metal instead of plastic",
        "exactly this, to be honest",
        "a longer warranty",
    ],
}


def web_review(rng: Rng, target: int) -> str:
    pools: dict[str, Pool] = {**COMMON, **REVIEW_POOLS}
    brand, product = rng.choice(REVIEW_BRANDS), rng.choice(REVIEW_PRODUCTS)
    fixed = {"brand": brand, "product": product}

    def one() -> str:
        stars = rng.randint(1, 5)
        head = (
            f"{'★' * stars}{'☆' * (5 - stars)} {cap(fill(rng, '{quality}', pools))} {product}\n"
            f"Reviewed by {handle(rng)} on {date(rng)} — Verified purchase"
        )
        body = paragraph(rng, REVIEW_SENTENCES, pools, 3, 6, fixed)
        pros = ", ".join(
            rng.sample(
                [
                    "easy to clean",
                    "quiet",
                    "light",
                    "good value",
                    "looks great",
                    "long battery life",
                    "sturdy",
                ],
                2,
            )
        )
        cons = ", ".join(
            rng.sample(
                ["pricey", "short cable", "loud", "heavy", "fiddly controls", "mediocre manual"],
                rng.randint(1, 2),
            )
        )
        return f"{head}\n\n{body}\n\nPros: {pros}\nCons: {cons}\nHelpful? {rng.randint(0, 250)} people found this helpful."

    return grow(target, lambda: f"Customer reviews: {brand} {product}\n\n" + one(), one, "\n\n---\n\n")


def gen_web(rng: Rng, target: int) -> str:
    if target < 350:
        pools: dict[str, Pool] = {**COMMON, **NEWS_POOLS, **REVIEW_POOLS}
        return fill(rng, rng.choice(NEWS_SENTENCES), pools) + " " + commentary(rng)
    return rng.choice([web_blog, web_news, web_forum, web_review])(rng, target)


# ============================================================================= knowledge

CONCEPTS: dict[str, list[str]] = {
    "Photosynthesis": [
        "Photosynthesis is the process by which plants, algae and some bacteria capture the energy of light and "
        "store it in chemical bonds.",
        "In most plants it takes place inside chloroplasts, small structures packed with the green pigment chlorophyll.",
        "Light energy is used to split water, releasing oxygen as a by-product and producing short-lived energy carriers.",
        "In a second set of reactions those carriers drive the conversion of carbon dioxide into simple sugars.",
        "Because nearly every food chain begins with an organism that photosynthesises, the process underpins most "
        "life on the surface of the planet.",
        "Its rate depends on light, temperature and carbon dioxide, and it stops rising once one of them becomes "
        "the limiting factor.",
    ],
    "Plate tectonics": [
        "Plate tectonics describes the outer shell of the Earth as a set of rigid plates that move slowly over a "
        "hotter, weaker layer beneath.",
        "Typical speeds are a few centimetres per year, roughly the rate at which fingernails grow.",
        "Where plates pull apart, new crust forms from rising magma, as along mid-ocean ridges.",
        "Where they converge, one plate may sink beneath another, building mountain ranges, deep trenches and chains "
        "of volcanoes.",
        "Plates that slide past each other produce transform faults, which are often the source of earthquakes.",
        "The theory unified older observations such as the matching shapes of coastlines and the distribution of fossils.",
    ],
    "The water cycle": [
        "The water cycle is the continuous movement of water between the oceans, the atmosphere and the land.",
        "Heat from the Sun evaporates water from seas, lakes and soil, and plants release more through their leaves.",
        "As moist air rises and cools, the vapour condenses into droplets that form clouds.",
        "Precipitation returns the water to the surface as rain, snow or hail.",
        "Some of it runs off into rivers, some soaks into the ground to recharge aquifers, and some is stored for "
        "long periods in ice sheets.",
        "The cycle redistributes heat around the globe and shapes weather, erosion and the availability of fresh water.",
    ],
    "Immune memory": [
        "Immune memory is the ability of the immune system to respond faster and more strongly to a pathogen it has "
        "met before.",
        "After a first infection, a small population of long-lived memory cells remains in the body.",
        "If the same pathogen returns, these cells recognise it quickly and trigger a targeted response.",
        "Vaccination uses this mechanism by exposing the body to a harmless version or fragment of a pathogen.",
        "The strength and duration of memory differ between diseases, which is why some vaccines need booster doses.",
    ],
    "Movable type printing": [
        "Printing with movable type means assembling a page from individual reusable characters rather than carving "
        "a whole page as a single block.",
        "Early forms of the technique appeared in East Asia using ceramic and later metal type.",
        "In Europe, a press combining metal type, oil-based ink and a screw mechanism spread rapidly in the late "
        "fifteenth century.",
        "Cheaper books encouraged literacy, standardised spelling and the rapid exchange of scientific ideas.",
        "Historians often link the spread of printing to religious reform and the growth of universities.",
    ],
    "Erosion": [
        "Erosion is the removal of soil and rock from one place and its transport to another by water, wind or ice.",
        "Rivers cut valleys over long periods, while waves wear back coastlines and form cliffs and arches.",
        "Glaciers grind the rock beneath them and carry debris far from its source.",
        "Human activities such as deforestation and intensive farming can speed up soil erosion considerably.",
        "Terracing, cover crops and windbreaks are common ways to slow the loss of fertile topsoil.",
    ],
    "Tides": [
        "Tides are the regular rise and fall of sea level caused mainly by the gravitational pull of the Moon.",
        "Because the pull differs across the Earth, the oceans bulge on the side facing the Moon and on the opposite side.",
        "Most coasts therefore see two high tides and two low tides roughly every day.",
        "When the Sun and Moon line up, their effects add and produce larger spring tides; at right angles they "
        "partly cancel, giving neap tides.",
        "The shape of coastlines and the sea floor can amplify tides dramatically in some bays and estuaries.",
    ],
    "Monsoon": [
        "A monsoon is a seasonal reversal of the prevailing wind that brings a pronounced wet season.",
        "It is driven by the different rates at which land and sea heat up during the year.",
        "In summer, warm land draws in moist air from the ocean, producing heavy rain over large regions.",
        "In winter the pattern reverses and drier air flows from land towards the sea.",
        "Agriculture in many densely populated areas depends on the timing and strength of the monsoon rains.",
    ],
    "Industrialisation": [
        "Industrialisation is the shift from an economy based mainly on farming and handicrafts to one dominated by "
        "manufacturing.",
        "It typically involves new sources of power, such as steam and later electricity, and the organisation of "
        "work in factories.",
        "Improved transport, including canals and railways, allowed raw materials and goods to move cheaply over "
        "long distances.",
        "Cities grew quickly as workers moved from the countryside, often into crowded and unhealthy housing.",
        "Over time, the process raised average incomes but also created new social and environmental problems.",
    ],
    "Cell division": [
        "Cell division is the process by which a parent cell divides into two or more daughter cells.",
        "In mitosis, the chromosomes are copied and then separated so that each new cell receives a complete set.",
        "Meiosis is a specialised form of division that halves the number of chromosomes and produces reproductive cells.",
        "Checkpoints monitor the process and can pause it if the genetic material is damaged.",
        "Uncontrolled division, when those safeguards fail, is a hallmark of many cancers.",
    ],
    "Sound": [
        "Sound is a mechanical wave that travels through a medium such as air, water or solid material.",
        "It consists of alternating regions of compression and rarefaction moving away from the source.",
        "The pitch we hear is related to the frequency of the wave, and loudness to its amplitude.",
        "Sound travels faster in water than in air, and faster still in many solids.",
        "Unlike light, it cannot travel through a vacuum because there are no particles to carry the vibration.",
    ],
    "Volcanoes": [
        "A volcano is an opening in the crust through which molten rock, gases and ash escape to the surface.",
        "The style of an eruption depends largely on how viscous the magma is and how much gas it contains.",
        "Runny, gas-poor magma tends to produce gentle lava flows, while sticky, gas-rich magma can explode violently.",
        "Many volcanoes lie along plate boundaries, though some sit above hot spots far from any boundary.",
        "Volcanic soils are often very fertile, which is one reason people continue to live near active volcanoes.",
    ],
    "Coral reefs": [
        "Coral reefs are underwater structures built from the skeletons of colonies of small marine animals.",
        "Many reef-building corals live in partnership with algae that supply them with food through photosynthesis.",
        "Reefs cover a tiny fraction of the ocean floor yet support a large share of marine species.",
        "They also protect coastlines by absorbing the energy of waves.",
        "Warming water can cause corals to expel their algae, a stress response known as bleaching.",
    ],
    "Glaciers": [
        "A glacier is a large, persistent body of ice that forms where snow accumulates faster than it melts.",
        "Over many years the snow is compressed into dense ice that begins to flow under its own weight.",
        "Moving glaciers carve characteristic U-shaped valleys and leave ridges of debris called moraines.",
        "Glaciers store a significant portion of the world's fresh water.",
        "Their advance and retreat provide a long-term record of changes in climate.",
    ],
    "Supply and demand": [
        "Supply and demand is a model of how prices are set in a market.",
        "Demand describes how much of a good buyers want at each price, and usually falls as the price rises.",
        "Supply describes how much sellers are willing to offer, and usually rises with the price.",
        "The price at which the two quantities match is called the equilibrium price.",
        "Shifts in tastes, incomes, costs or technology move the curves and change the equilibrium.",
    ],
    "The periodic table": [
        "The periodic table arranges the chemical elements in order of increasing atomic number.",
        "Elements in the same column, called a group, tend to have similar chemical properties because of their "
        "outer electrons.",
        "Rows, called periods, correspond to the filling of successive electron shells.",
        "Early versions of the table left gaps for elements that had not yet been discovered, and predicted some of "
        "their properties.",
        "Metals occupy most of the table, with non-metals concentrated towards the upper right.",
    ],
}

SYLL = "ka lo ren mi sa tor vel an dru ish or bel fen gar mo ta ul zen rha quo".split()


def invented_word(rng: Rng, lo: int = 2, hi: int = 3) -> str:
    return cap("".join(rng.choice(SYLL) for _ in range(rng.randint(lo, hi))))


KNOW_POOLS: dict[str, Pool] = {
    **COMMON,
    "region": lambda rng: (
        f"the {invented_word(rng)} {rng.choice(['Basin', 'Highlands', 'Plateau', 'Valley', 'Coast'])}"
    ),
    "direction": ["north", "south-east", "west", "north-west", "east"],
    "sea": lambda rng: f"the {invented_word(rng)} Sea",
    "season": ["late spring", "early summer", "the autumn rains", "the short wet season"],
    "goods": ["timber", "salt", "grain", "wool and dyed cloth", "copper ore"],
    "rock": ["granite", "limestone", "basalt", "sandstone", "schist"],
    "economy": [
        "fishing",
        "textile manufacturing",
        "software services",
        "tourism",
        "dairy farming",
        "shipbuilding",
    ],
    "landmark": ["a stone bridge", "a covered market", "a lighthouse", "the old mint", "a botanical garden"],
    "habitat": [
        "wet meadows",
        "rocky shorelines",
        "mountain forests",
        "dry scrubland",
        "slow-moving streams",
    ],
    "group": ["beetle", "songbird", "freshwater fish", "orchid", "frog", "moth", "fern"],
    "diet": ["seeds and small insects", "algae", "nectar", "snails", "decaying wood"],
    "status": ["least concern", "near threatened", "vulnerable", "data deficient"],
    "realm": lambda rng: f"the Kingdom of {invented_word(rng)}",
    "startype": ["red dwarf", "orange dwarf", "Sun-like", "young, rapidly rotating"],
    "colour": ["pale green", "deep blue", "honey-yellow", "colourless", "reddish-brown"],
}

KNOW_ENTRIES: dict[str, list[str]] = {
    "river": [
        "The {name} is a river in {region}, about {big} kilometres long.",
        "It rises at an elevation of roughly {big} metres and flows {direction} before emptying into {sea}.",
        "Its drainage basin covers some {big} square kilometres and is home to about {num} towns.",
        "Flow is strongest in {season}, when meltwater and rain arrive together.",
        "Historically the river carried {goods}, and several of its ports date from the {num}th century of the "
        "local calendar.",
        "A dam completed in {year} near {town} regulates the lower course and supplies electricity to the region.",
        "Its main tributaries include the {tributary} and the {tributary}.",
        "The river's delta is an important stopover for migrating birds.",
    ],
    "mountain": [
        "{name} is a mountain in {region}, rising to {big} metres above sea level.",
        "It is composed mainly of {rock}, heavily folded during an ancient mountain-building episode.",
        "The first recorded ascent was made in {year} by a party led by {person}.",
        "Several glaciers once covered its northern face, but most have retreated significantly.",
        "The summit can be reached in {small} days by the standard route, which is considered moderately difficult.",
        "Local legends describe the peak as the seat of a weather spirit.",
    ],
    "town": [
        "{name} is a town in {region} with a population of about {big} people.",
        "It was founded in {year} as a market settlement on a river crossing.",
        "Its economy has traditionally relied on {economy}, although {economy} has grown in recent decades.",
        "Notable landmarks include {landmark} and {landmark}.",
        "The town is twinned with {town} and hosts an annual festival in {month}.",
        "A railway line opened in {year} connects it with the regional capital.",
    ],
    "species": [
        "The {name} is a species of {group} found in {habitat} of {region}.",
        "Adults typically measure {small} to {num} millimetres in length.",
        "It feeds mainly on {diet}, and is most active at dawn and dusk.",
        "Breeding takes place in {season}, when individuals gather in small groups.",
        "The species was first described scientifically in {year} by {person}.",
        "Its conservation status is listed as {status}, mainly because of habitat loss.",
    ],
    "treaty": [
        "The Treaty of {name} was signed in {year} between {realm} and {realm}.",
        "It ended {small} decades of intermittent conflict over trade routes and border fortresses.",
        "Its {num} articles fixed a new frontier, regulated tolls on {goods} and provided for an exchange of prisoners.",
        "Negotiations lasted {small} months and were mediated by envoys from a neutral city.",
        "Historians disagree on whether the treaty was a genuine compromise or merely a pause in hostilities.",
    ],
    "exoplanet": [
        "{name} b is an exoplanet orbiting a {startype} star about {big} light-years from Earth.",
        "It completes one orbit every {num} days at a distance of roughly 0.{small} astronomical units.",
        "Its mass is estimated at {small} times that of Earth, placing it among the so-called super-Earths.",
        "The planet was detected by the transit method, which measures the small dip in starlight as it passes "
        "in front of its star.",
        "Models suggest a surface temperature of several hundred degrees, too hot for liquid water.",
    ],
    "mineral": [
        "{name}ite is a {colour} mineral first described from specimens collected near {town}.",
        "It has a hardness of about {small} on the Mohs scale and a glassy lustre.",
        "Crystals are usually small, rarely exceeding {small} centimetres.",
        "It forms in cavities of {rock} as hot fluids cool slowly.",
        "Collectors value well-formed specimens, but the mineral has no significant industrial use.",
    ],
}
KNOW_SECTIONS = ["Overview", "History", "Characteristics", "Geography", "Significance", "Notes"]


def know_entry(rng: Rng) -> str:
    kind = rng.choice(sorted(KNOW_ENTRIES))
    name = invented_word(rng)
    fixed = {"name": name}
    pools = {**KNOW_POOLS, "tributary": lambda r: invented_word(r)}
    title = {
        "exoplanet": f"{name} b",
        "mineral": f"{name}ite",
        "treaty": f"Treaty of {name}",
        "river": f"{name} (river)",
    }.get(kind, name)
    # the defining sentence stays first, as in a real encyclopedia entry; the rest are shuffled
    first = fill(rng, KNOW_ENTRIES[kind][0], pools, fixed)
    others = KNOW_ENTRIES[kind][1:]
    rest = sentences(rng, others, pools, rng.randint(max(2, len(others) - 2), len(others)), fixed)
    cut = max(1, len(rest) // 2)
    return f"## {title}\n\n{first} {' '.join(rest[:cut])}\n\n{' '.join(rest[cut:])}"


def know_concept(rng: Rng) -> str:
    title = rng.choice(sorted(CONCEPTS))
    sents = CONCEPTS[title]
    cut = rng.randint(2, len(sents) - 2)
    extra = rng.choice(
        [
            f"The topic is usually introduced in school around the age of {rng.randint(10, 16)}.",
            "Researchers continue to refine the details using new measurements and computer models.",
            f"See also: {', '.join(rng.sample([t for t in sorted(CONCEPTS) if t != title], 2))}.",
        ]
    )
    return f"## {title}\n\n{' '.join(sents[:cut])}\n\n{' '.join(sents[cut:])} {extra}"


def gen_knowledge(rng: Rng, target: int) -> str:
    if target < 350:
        if rng.random() < 0.3:
            t = rng.choice(sorted(CONCEPTS))
            return f"{t}: " + " ".join(rng.sample(CONCEPTS[t], 2))
        return know_entry(rng).split("\n\n")[1]
    first = know_concept if rng.random() < 0.45 else know_entry

    def more() -> str:
        return know_entry(rng) if rng.random() < 0.75 else know_concept(rng)

    return grow(target, lambda: first(rng), more)


# ============================================================================= chinese

ZH_POOLS: dict[str, Pool] = {
    "person": [
        "张伟",
        "李娜",
        "王芳",
        "刘洋",
        "陈静",
        "杨帆",
        "赵磊",
        "黄丽",
        "周强",
        "吴敏",
        "徐明",
        "孙悦",
        "马超",
        "朱琳",
        "胡军",
        "郭婷",
        "何平",
        "林晓",
        "高峰",
        "罗佳",
    ],
    "city": [
        "北京",
        "上海",
        "广州",
        "深圳",
        "成都",
        "杭州",
        "武汉",
        "西安",
        "南京",
        "重庆",
        "苏州",
        "长沙",
        "青岛",
        "昆明",
        "厦门",
        "哈尔滨",
        "大连",
        "天津",
    ],
    "season": ["春天", "夏天", "秋天", "冬天"],
    "when": ["清晨", "傍晚", "周末", "上个月", "去年秋天", "今天上午", "前天晚上", "国庆假期", "春节前后"],
    "place": [
        "公园",
        "图书馆",
        "菜市场",
        "老街",
        "江边",
        "博物馆",
        "咖啡馆",
        "火车站",
        "小区门口",
        "山脚下",
        "夜市",
    ],
    "activity": [
        "散步",
        "看书",
        "跑步",
        "买菜",
        "拍照",
        "下棋",
        "喝茶",
        "练太极拳",
        "遛狗",
        "骑自行车",
        "写生",
    ],
    "food": ["饺子", "面条", "包子", "火锅", "米粉", "月饼", "汤圆", "烤鸭", "馄饨", "小笼包", "凉皮"],
    "adj": ["热闹", "安静", "美丽", "干净", "凉爽", "温暖", "繁忙", "宽敞", "古老", "现代"],
    "thing": ["鲜花", "游客", "小摊", "自行车", "红灯笼", "老房子", "梧桐树", "广告牌"],
    "topic": [
        "太阳能发电",
        "人工智能",
        "垃圾分类",
        "城市公共交通",
        "节约用水",
        "高速铁路",
        "电动汽车",
        "线上教育",
        "传统节日文化",
        "社区养老服务",
    ],
    "product": ["蓝牙耳机", "智能手表", "扫地机器人", "电动牙刷", "无线吸尘器", "平板电脑", "电子阅读器"],
    "small": lambda rng: str(rng.randint(2, 12)),
    "num": lambda rng: str(rng.randint(15, 95)),
    "big": lambda rng: str(rng.randint(120, 9800)),
    "pct": lambda rng: f"{rng.randint(1, 30)}.{rng.randint(0, 9)}",
    "price": lambda rng: str(rng.randint(49, 3999)),
    "score": lambda rng: str(rng.randint(6, 10)),
    "date": lambda rng: f"{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
}
ZH_STORY = [
    "{when}，{person}和朋友一起去{place}{activity}。",
    "{city}的{season}总是很{adj}，街上到处都是{thing}。",
    "虽然天气有点冷，但是{person}还是坚持每天{activity}{num}分钟。",
    "{person}笑着说：“我从小就喜欢吃{food}，尤其是奶奶做的。”",
    "这家店已经开了{small}年，老板是一位来自{city}的中年人。",
    "走进{place}，首先看到的是一排排{adj}的{thing}。",
    "我们一边{activity}，一边聊起了小时候的事情。",
    "回家的路上，天慢慢黑了下来，路灯一盏接一盏地亮了。",
    "那天晚上，我们在{place}附近找了一家小馆子，点了一大盘{food}。",
    "{person}说，已经有{small}年没有回过{city}了。",
    "我突然发现，原来生活中的美好就藏在这些平凡的小事里。",
    "第二天一早，我们又出发了，这一次的目的地是{city}。",
    "{place}附近新开了一家书店，周末常常挤满了年轻人。",
    "离开{city}的时候，我心里有些舍不得。",
]
ZH_NEWS = [
    "据统计，{city}今年共接待游客{big}万人次，比去年增长了{pct}%。",
    "{city}市政府{date}宣布，将在未来{small}年内投资{big}亿元用于{topic}。",
    "专家表示，{topic}的发展不仅能够提高效率，还能减少资源浪费。",
    "记者在现场看到，不少市民正在排队参观，现场秩序井然。",
    "当地工作人员{person}介绍说，目前项目已经完成了{num}%。",
    "有关部门提醒广大市民，出行前要提前关注天气变化，注意安全。",
    "截至{date}，全市共有{big}家企业参与了这项计划。",
    "业内人士认为，这一政策将对{topic}产生深远影响。",
    "下一步，{city}还将继续完善相关配套设施。",
]
ZH_EXPLAIN = [
    "关于{topic}，很多人存在一些误解。",
    "首先，我们需要了解{topic}的基本原理和发展历程。",
    "其次，{topic}在日常生活中的应用越来越广泛。",
    "以{city}为例，过去{small}年里，相关的设施数量增加了将近{small}倍。",
    "不过，{topic}也面临着成本高、标准不统一等问题。",
    "要想真正推广{topic}，还需要政府、企业和个人的共同努力。",
    "从长远来看，{topic}将深刻影响我们的生活方式。",
    "有调查显示，超过{num}%的受访者表示愿意进一步了解{topic}。",
    "总的来说，{topic}既是机遇，也是挑战。",
]
ZH_REVIEW = [
    "这款{product}的外观设计很简洁，拿在手里手感不错。",
    "我已经用了{small}个星期，整体感觉还算满意。",
    "电池续航大约{small}个小时，基本能满足一天的使用。",
    "唯一的缺点是价格有点贵，要{price}元。",
    "客服的态度很好，有问题基本上当天就能回复。",
    "和之前用的那款相比，这款的声音明显小了很多。",
    "包装很结实，快递{small}天就到了。",
    "总体来说，我给这款产品打{score}分，推荐给有需要的朋友。",
]
ZH_TITLES = {
    "story": ["{city}游记", "{season}里的{place}", "记{when}的一次{activity}", "我和{food}的故事"],
    "news": ["{city}加快推进{topic}", "{topic}成为{city}发展新亮点", "{city}发布{topic}新计划"],
    "explain": ["浅谈{topic}", "{topic}到底是什么？", "关于{topic}的几点思考"],
    "review": ["{product}使用体验", "用了{small}周的{product}，说说真实感受"],
}
ZH_GENRES = {"story": ZH_STORY, "news": ZH_NEWS, "explain": ZH_EXPLAIN, "review": ZH_REVIEW}


def zh_article(rng: Rng, paragraphs: int) -> str:
    genre = rng.choice(sorted(ZH_GENRES))
    templates = ZH_GENRES[genre]
    fixed = {"topic": fill(rng, "{topic}", ZH_POOLS), "product": fill(rng, "{product}", ZH_POOLS)}
    title = fill(rng, rng.choice(ZH_TITLES[genre]), ZH_POOLS, fixed)
    if genre == "explain":  # an argument has an order: first, second, finally
        paras = ["".join(fill(rng, t, ZH_POOLS, fixed) for t in ordered(rng, templates, 5, len(templates)))]
    else:
        paras = [paragraph(rng, templates, ZH_POOLS, 3, 6, fixed, joiner="") for _ in range(paragraphs)]
    return "\n\n".join([title, *paras])


def gen_chinese(rng: Rng, target: int) -> str:
    """Short texts are one paragraph; long ones a column of several articles on different topics."""
    if target < 120:
        return zh_article(rng, 1).split("\n\n", 1)[1]
    return grow(
        target, lambda: zh_article(rng, rng.randint(2, 4)), lambda: zh_article(rng, rng.randint(2, 4))
    )


# ============================================================================= other scripts

OS_LANGS: dict[str, dict[str, object]] = {
    "russian": {
        "pools": {
            "name": ["Анна", "Иван", "Мария", "Дмитрий", "Ольга", "Сергей", "Елена", "Алексей"],
            "city": ["Казань", "Самара", "Тверь", "Омск", "Пермь", "Томск", "Владимир", "Ярославль"],
            "job": ["учителем", "врачом", "инженером", "программистом", "библиотекарем", "поваром"],
            "month": ["январе", "марте", "мае", "июле", "сентябре", "ноябре"],
            "weather": ["холодной", "тёплой", "дождливой", "солнечной", "ветреной"],
            "few": num(5, 19),
            "rub": lambda r: str(r.randint(2, 30) * 50),
            "hour": num(6, 11),
        },
        "title": "Заметки о городе {city}",
        "sents": [
            "{name} живёт в городе {city} уже {few} лет и работает {job}.",
            "Каждое утро {name} пьёт чай и читает новости.",
            "В субботу мы поехали за город, где было тихо и очень красиво.",
            "По данным местной администрации, в этом году в городе {city} построили {few} новых школ.",
            "Погода в {month} была {weather}.",
            "На рынке можно купить свежие овощи, фрукты и домашний хлеб.",
            "{name} говорит, что лучший способ выучить язык — это много читать и разговаривать с людьми.",
            "Музей открыт с {hour} до 18 часов, а билет стоит {rub} рублей.",
            "Дети играли во дворе, а взрослые обсуждали последние новости.",
            "Вечером на набережной всегда много людей, которые гуляют и фотографируют закат.",
            "Учёные отмечают, что климат в регионе постепенно меняется.",
            "Поезд отправляется рано утром, поэтому нужно выйти из дома заранее.",
        ],
    },
    "greek": {
        "pools": {
            "name": ["Ο Νίκος", "Η Μαρία", "Ο Γιώργος", "Η Ελένη", "Ο Κώστας", "Η Σοφία"],
            "city": [
                "στην Αθήνα",
                "στη Θεσσαλονίκη",
                "στην Πάτρα",
                "στη Λάρισα",
                "στα Χανιά",
                "στο Ηράκλειο",
            ],
            "job": ["μηχανικός", "γιατρός", "φαρμακοποιός", "δικηγόρος"],
            "few": num(3, 20),
            "hour": num(8, 10),
            "late": num(5, 8),
        },
        "title": "Μια μέρα {city}",
        "sents": [
            "{name} μένει {city} εδώ και {few} χρόνια και δουλεύει ως {job}.",
            "Κάθε πρωί πίνει καφέ και διαβάζει τις ειδήσεις.",
            "Το καλοκαίρι η θάλασσα είναι ζεστή και οι παραλίες γεμίζουν κόσμο.",
            "Το μουσείο είναι ανοιχτό από τις {hour} το πρωί μέχρι τις {late} το απόγευμα.",
            "Στη λαϊκή αγορά μπορεί κανείς να βρει φρέσκα λαχανικά, φρούτα και ελαιόλαδο.",
            "Σύμφωνα με τον δήμο, φέτος φυτεύτηκαν {few}0 νέα δέντρα στην πόλη.",
            "Τα παιδιά έπαιζαν στην πλατεία ενώ οι μεγάλοι συζητούσαν.",
            "Οι επιστήμονες λένε ότι το κλίμα της περιοχής αλλάζει σιγά σιγά.",
            "Το βράδυ πολλοί άνθρωποι κάνουν βόλτα στο λιμάνι.",
            "Το τρένο φεύγει νωρίς το πρωί και η διαδρομή διαρκεί περίπου {late} ώρες.",
        ],
    },
    "arabic": {
        "pools": {
            "name": ["أحمد", "محمد", "يوسف", "خالد", "عمر", "سامي"],
            "city": ["القاهرة", "عمّان", "الرباط", "تونس", "بيروت", "الدوحة", "مسقط"],
            "few": num(3, 10),
            "many": num(20, 900),
            "hour": num(8, 10),
            "late": num(5, 9),
            "temp": num(38, 48),
        },
        "title": "يوميات من {city}",
        "sents": [
            "يعيش {name} في مدينة {city} منذ {few} سنوات.",
            "في الصباح الباكر تكون الشوارع هادئة والهواء منعشًا.",
            "يقع السوق القديم في وسط المدينة، ويبيع التجار فيه التوابل والأقمشة والفواكه.",
            "قالت البلدية إنها زرعت {many} شجرة جديدة هذا العام.",
            "يفتح المتحف أبوابه من الساعة {hour} صباحًا حتى الساعة {late} مساءً.",
            "يحب الأطفال اللعب في الحديقة بعد انتهاء الدروس.",
            "في فصل الصيف ترتفع درجات الحرارة لتصل أحيانًا إلى {temp} درجة مئوية.",
            "يرى الباحثون أن التعليم هو أساس تقدم المجتمعات.",
            "قال {name} إن قراءة كتاب واحد كل شهر عادة مفيدة جدًا.",
            "اجتمع أفراد العائلة مساء الجمعة لتناول العشاء معًا.",
        ],
    },
    "hindi": {
        "pools": {
            "name": ["राहुल", "प्रिया", "अमित", "सुनीता", "विकास", "अंजलि", "रोहन", "कविता"],
            "city": ["दिल्ली", "मुंबई", "जयपुर", "लखनऊ", "पुणे", "भोपाल", "पटना", "इंदौर"],
            "few": num(3, 20),
            "many": num(20, 900),
            "hour": num(8, 10),
            "late": num(5, 8),
            "temp": num(40, 47),
        },
        "title": "{city} की एक सुबह",
        "sents": [
            "{name} पिछले {few} वर्षों से {city} में रहते हैं।",
            "हर सुबह वे चाय पीते हैं और अख़बार पढ़ते हैं।",
            "बाज़ार में ताज़ी सब्ज़ियाँ, फल और मसाले मिलते हैं।",
            "नगर निगम के अनुसार इस साल शहर में {many} नए पेड़ लगाए गए।",
            "संग्रहालय सुबह {hour} बजे से शाम {late} बजे तक खुला रहता है।",
            "बच्चे पार्क में खेल रहे थे और बड़े लोग बातें कर रहे थे।",
            "गर्मियों में तापमान कभी-कभी {temp} डिग्री सेल्सियस तक पहुँच जाता है।",
            "वैज्ञानिकों का कहना है कि इस क्षेत्र की जलवायु धीरे-धीरे बदल रही है।",
            "शाम को नदी के किनारे बहुत से लोग टहलने आते हैं।",
            "{name} का मानना है कि किताबें पढ़ना सबसे अच्छी आदत है।",
        ],
    },
    "japanese": {
        "pools": {
            "name": ["田中さん", "佐藤さん", "鈴木さん", "高橋さん", "伊藤さん", "渡辺さん", "山本さん"],
            "city": ["東京", "大阪", "京都", "札幌", "福岡", "名古屋", "仙台", "広島"],
            "few": num(2, 20),
            "many": num(20, 500),
            "hour": num(9, 10),
            "late": num(5, 6),
            "temp": num(35, 39),
        },
        "title": "{city}だより",
        "sents": [
            "{name}は{city}に住んで{few}年になります。",
            "毎朝、コーヒーを飲みながらニュースを読むのが習慣です。",
            "駅の近くに新しいパン屋ができて、週末はいつも行列ができています。",
            "市によると、今年は公園に{many}本の桜の木が植えられました。",
            "美術館は午前{hour}時から午後{late}時まで開いています。",
            "子どもたちは公園で遊び、大人たちはベンチで話をしていました。",
            "夏になると、気温が{temp}度を超える日もあります。",
            "専門家は、この地域の気候が少しずつ変化していると指摘しています。",
            "夕方になると、川沿いを散歩する人が多くなります。",
            "{name}は、外国語を学ぶには毎日少しずつ続けることが大切だと言っています。",
        ],
    },
    "korean": {
        "pools": {
            "name": ["민준 씨", "서연 씨", "지훈 씨", "하은 씨", "도윤 씨", "수아 씨", "현우 씨"],
            "city": ["서울", "부산", "대구", "인천", "광주", "대전", "울산", "제주"],
            "few": num(2, 20),
            "many": num(20, 500),
            "hour": num(9, 10),
            "late": num(5, 6),
            "temp": num(33, 38),
        },
        "title": "{city} 이야기",
        "sents": [
            "{name}는 {city}에서 {few}년째 살고 있습니다.",
            "매일 아침 커피를 마시면서 뉴스를 읽습니다.",
            "역 근처에 새로운 빵집이 생겨서 주말마다 사람들이 줄을 섭니다.",
            "시청에 따르면 올해 공원에 나무 {many}그루를 새로 심었습니다.",
            "박물관은 오전 {hour}시부터 오후 {late}시까지 문을 엽니다.",
            "아이들은 놀이터에서 놀고 어른들은 벤치에 앉아 이야기를 나누었습니다.",
            "여름에는 기온이 {temp}도까지 올라가는 날도 있습니다.",
            "전문가들은 이 지역의 기후가 조금씩 변하고 있다고 말합니다.",
            "저녁이 되면 강변을 산책하는 사람들이 많아집니다.",
            "{name}는 외국어를 배우려면 매일 꾸준히 공부하는 것이 중요하다고 말합니다.",
        ],
    },
    "hebrew": {
        "pools": {
            "name": ["דני", "נועה", "יוסי", "מיכל", "אבי", "תמר", "רון", "שירה"],
            "city": ["חיפה", "ירושלים", "אילת", "נתניה", "הרצליה", "עכו"],
            "few": num(3, 20),
            "many": num(20, 900),
            "hour": num(8, 10),
            "late": num(5, 8),
            "temp": num(35, 42),
        },
        "title": "יום רגיל ב{city}",
        "sents": [
            "המשפחה של {name} גרה ב{city} כבר {few} שנים.",
            "בכל בוקר אנשים רבים שותים קפה בבית הקפה הקטן ליד התחנה.",
            "בשוק אפשר לקנות ירקות טריים, פירות ותבלינים.",
            "לפי העירייה, השנה נשתלו בעיר {many} עצים חדשים.",
            "המוזיאון פתוח משעה {hour} בבוקר עד שעה {late} בערב.",
            "הילדים שיחקו בגן הציבורי והמבוגרים ישבו על הספסלים ודיברו.",
            "בקיץ הטמפרטורה מגיעה לפעמים ל-{temp} מעלות.",
            "לדברי החוקרים, האקלים באזור משתנה לאט לאט.",
            "בערב אנשים רבים יוצאים לטייל לאורך החוף.",
            "לדברי {name}, הדרך הטובה ביותר ללמוד שפה היא לקרוא הרבה ולדבר עם אנשים.",
        ],
    },
    "thai": {
        "pools": {
            "name": ["สมชาย", "สมศรี", "วิชัย", "มาลี", "ประเสริฐ", "นภา", "อนันต์"],
            "city": ["เชียงใหม่", "ภูเก็ต", "ขอนแก่น", "หาดใหญ่", "อุดรธานี", "นครราชสีมา"],
            "few": num(2, 20),
            "many": num(20, 900),
            "hour": num(8, 10),
            "late": num(16, 18),
            "temp": num(36, 41),
        },
        "title": "เรื่องเล่าจาก{city}",
        "sents": [
            "คุณ{name}อาศัยอยู่ที่{city}มาแล้ว {few} ปี",
            "ทุกเช้าเขาจะดื่มกาแฟและอ่านข่าว",
            "ที่ตลาดมีผักสด ผลไม้ และเครื่องเทศขายมากมาย",
            "ตามข้อมูลของเทศบาล ปีนี้มีการปลูกต้นไม้ใหม่ในเมือง {many} ต้น",
            "พิพิธภัณฑ์เปิดตั้งแต่เวลา {hour} นาฬิกาถึง {late} นาฬิกา",
            "เด็ก ๆ เล่นกันในสวนสาธารณะ ส่วนผู้ใหญ่นั่งคุยกันบนม้านั่ง",
            "ในฤดูร้อนอุณหภูมิบางวันสูงถึง {temp} องศาเซลเซียส",
            "นักวิทยาศาสตร์กล่าวว่าสภาพอากาศในภูมิภาคนี้กำลังเปลี่ยนแปลงอย่างช้า ๆ",
            "ตอนเย็นมีผู้คนมากมายมาเดินเล่นริมแม่น้ำ",
            "คุณ{name}เชื่อว่าการอ่านหนังสือทุกวันเป็นนิสัยที่ดีที่สุด",
        ],
    },
}
OS_ORDER = ["russian", "arabic", "hindi", "japanese", "korean", "greek", "hebrew", "thai"]


def gen_other_scripts(rng: Rng, target: int, index: int = 0) -> str:
    lang = OS_LANGS[OS_ORDER[index % len(OS_ORDER)]]
    pools: dict[str, Pool] = lang["pools"]  # type: ignore[assignment]
    sents: list[str] = lang["sents"]  # type: ignore[assignment]
    fixed = {"city": fill(rng, "{city}", pools)}
    joiner = " "
    title = fill(rng, str(lang["title"]), pools, fixed)

    def para() -> str:
        return paragraph(rng, sents, pools, 3, 6, fixed, joiner)

    if target < 150:
        return para()
    return grow(target, lambda: f"{title}\n\n{para()}", para)


# ============================================================================= dialogue


def d_recipe(rng: Rng) -> list[tuple[str, str]]:
    dish = rng.choice(
        ["pancakes", "lentil soup", "banana bread", "vegetable curry", "tomato sauce", "flatbread"]
    )
    base, want = rng.choice([2, 4, 6]), rng.choice([3, 5, 8, 10, 12])
    ingredients = rng.sample(
        [
            ("flour", "g", 250),
            ("milk", "ml", 300),
            ("eggs", "", 2),
            ("butter", "g", 40),
            ("red lentils", "g", 200),
            ("onions", "", 1),
            ("tomatoes", "g", 400),
            ("salt", "tsp", 1),
            ("sugar", "g", 50),
            ("olive oil", "tbsp", 2),
        ],
        rng.randint(4, 6),
    )
    factor = Fraction(want, base)

    def fmt(q: Fraction, unit: str) -> str:
        v = float(q)
        s = f"{v:.0f}" if unit in ("g", "ml") or v == int(v) else f"{v:.1f}"
        return f"{s} {unit}".strip()

    listing = "\n".join(f"- {fmt(Fraction(q), u)} {name}" for name, u, q in ingredients)
    scaled = "\n".join(f"- {name}: {fmt(Fraction(q) * factor, u)}" for name, u, q in ingredients)
    return [
        (
            f"I have a recipe for {dish} that serves {base}:\n{listing}\nCan you scale it for {want} people?",
            f"Sure. Multiply every amount by {want}/{base} = {float(factor):.3g}:\n{scaled}\n"
            "Cooking times usually stay about the same, but a larger pot may need a few extra minutes to heat through.",
        ),
        (
            "What if I don't have eggs?"
            if any(n == "eggs" for n, _, _ in ingredients)
            else "Can I make it a day ahead?",
            rng.choice(
                [
                    "For binding, a mashed banana or a tablespoon of ground flaxseed mixed with three tablespoons "
                    "of water per egg works well in most batters.",
                    "Yes. Let it cool completely, keep it covered in the fridge, and reheat gently; the flavour "
                    "often improves overnight.",
                ]
            ),
        ),
    ]


def d_math(rng: Rng) -> list[tuple[str, str]]:
    stmt, sol = rng.choice(MATH_PROBLEMS)(rng)
    turns = [(f"Can you help me with this homework question? {stmt}", f"Of course. {sol}")]
    if rng.random() < 0.6:
        turns.append(
            (
                "Why does that first step work?",
                "Each step keeps the statement equivalent: we apply the same operation to both sides or "
                "rewrite an expression without changing its value. That is why the final answer can be "
                "checked by substituting it back into the original problem.",
            )
        )
    return turns


def d_code(rng: Rng) -> list[tuple[str, str]]:
    ent = rng.choice(ENTITIES)
    bug = rng.randrange(3)
    if bug == 0:
        snippet = (
            f"def add_{ent}(item, bucket=[]):\n    bucket.append(item)\n    return bucket\n\n"
            f"print(add_{ent}(1))\nprint(add_{ent}(2))  # prints [1, 2]??"
        )
        answer = (
            f"The default list is created once, when the function is defined, and then shared by every call. "
            f"Use `None` as the default instead:\n\n```python\ndef add_{ent}(item, bucket=None):\n"
            f"    if bucket is None:\n        bucket = []\n    bucket.append(item)\n    return bucket\n```"
        )
    elif bug == 1:
        snippet = (
            f"{ent}s = [3, 8, 0, 5, 0]\nfor x in {ent}s:\n    if x == 0:\n        {ent}s.remove(x)\n"
            f"print({ent}s)"
        )
        answer = (
            f"Removing items from a list while iterating over it shifts the remaining elements, so the loop "
            f"skips some of them. Build a new list instead:\n\n```python\n{ent}s = [x for x in {ent}s if x != 0]\n```"
        )
    else:
        snippet = f"def mean_{ent}(values):\n    return sum(values) / len(values)\n\nmean_{ent}([])"
        answer = (
            "`len(values)` is zero for an empty list, so the division raises `ZeroDivisionError`. Decide what "
            f"an empty input should mean and handle it explicitly:\n\n```python\ndef mean_{ent}(values):\n"
            "    if not values:\n        return 0.0  # or raise ValueError('no values')\n"
            "    return sum(values) / len(values)\n```"
        )
    return [
        (f"Why does this not work as expected?\n\n```python\n{snippet}\n```", answer),
        (
            "Thanks! Is there a linter that would have caught this?",
            "Several would. Tools such as ruff or pylint flag mutable defaults and some loop pitfalls, and a unit "
            "test with an edge case (an empty list, a repeated call) catches the rest.",
        ),
    ]


def d_travel(rng: Rng) -> list[tuple[str, str]]:
    place, days = town(rng), rng.randint(2, 5)
    acts = [
        "walk the old harbour",
        "visit the museum of local history",
        "take the cable car up the hill",
        "spend the morning at the market",
        "rent bikes and follow the river path",
        "go on a day trip to " + town(rng),
        "try the street food around the station",
        "see the cathedral and the botanical garden",
    ]
    plan = "\n".join(f"Day {d}: {cap(a)}." for d, a in enumerate(rng.sample(acts, days), 1))
    return [
        (
            f"I'm visiting {place} for {days} days in {rng.choice(MONTHS)}. Any suggestions?",
            f"Here is a relaxed plan:\n{plan}\n"
            + rng.choice(
                [
                    "Keep one afternoon free for bad weather or for anything you discover along the way.",
                    "Book the popular places a day ahead; they fill up quickly in high season.",
                    "Most sights are within walking distance of the centre, so comfortable shoes matter more than "
                    "a car.",
                ]
            ),
        ),
        (
            "Is public transport good there?",
            f"Buses run every {rng.randint(8, 30)} minutes in the centre. A "
            f"{rng.randint(2, 7)}-day pass is usually cheaper than single tickets if you make more than "
            f"{rng.randint(3, 5)} trips a day.",
        ),
    ]


def d_convert(rng: Rng) -> list[tuple[str, str]]:
    km, c, kg = rng.randint(3, 400), rng.randint(-20, 40), rng.randint(2, 120)
    return [
        (f"How many miles is {km} km?", f"{km} km is about {km * 0.621371:.1f} miles (1 km ≈ 0.6214 miles)."),
        (f"And {c} °C in Fahrenheit?", f"Use F = C × 9/5 + 32: {c} × 1.8 + 32 = {c * 1.8 + 32:.1f} °F."),
        (f"Last one: {kg} kg in pounds?", f"{kg} kg ≈ {kg * 2.20462:.1f} lb."),
    ]


def d_email(rng: Rng) -> list[tuple[str, str]]:
    who, topic = (
        person(rng),
        rng.choice(
            [
                "moving our meeting to next week",
                "a delayed invoice",
                "feedback on the draft report",
                "a request for two days off",
            ]
        ),
    )
    me = rng.choice(FIRST_NAMES)
    return [
        (
            f"Can you draft a short, polite email to {who} about {topic}? Sign it {me}.",
            f"Subject: {cap(topic)}\n\nDear {who.split()[0]},\n\nI hope you are well. I am writing about "
            f"{topic}. Would {rng.choice(WEEKDAYS)} or {rng.choice(WEEKDAYS)} work for a quick call to sort out "
            f"the details? Please let me know if another time suits you better.\n\nThank you for your help.\n\n"
            f"Best regards,\n{me}",
        ),
        (
            "Make it a bit more formal.",
            'Certainly. I would replace "I hope you are well" with "I hope this '
            'message finds you well", and "a quick call" with "a brief meeting". The structure can stay as is.',
        ),
    ]


def d_schedule(rng: Rng) -> list[tuple[str, str]]:
    subjects = rng.sample(
        ["chemistry", "history", "statistics", "French", "programming", "biology", "economics"], 3
    )
    hours = rng.randint(8, 20)
    w = [rng.randint(1, 4) for _ in subjects]
    parts = [hours * x / sum(w) for x in w]
    lines = "\n".join(f"- {s}: about {p:.1f} h" for s, p in zip(subjects, parts, strict=True))
    return [
        (
            f"I have {hours} hours this week to study {', '.join(subjects)}. The exams have weights "
            f"{', '.join(map(str, w))}. How should I split my time?",
            f"Splitting in proportion to the weights gives:\n{lines}\n"
            + rng.choice(
                [
                    "Blocks of 45–60 minutes with short breaks tend to work better than long sessions.",
                    "Start each day with the subject you find hardest, while you are fresh.",
                    "Leave the last day for mixed review rather than new material.",
                    "If one exam comes much earlier, shift some hours towards it in the first days.",
                ]
            ),
        )
    ]


DIALOGUE_TOPICS = [d_recipe, d_math, d_code, d_travel, d_convert, d_email, d_schedule]


def gen_dialogue(rng: Rng, target: int) -> str:
    user, bot = rng.choice([("User", "Assistant"), ("User", "Assistant"), ("Human", "AI")])
    head = ""
    if rng.random() < 0.3:
        head = "System: You are a helpful assistant. Answer concisely.\n\n"
    if target < 300:
        q, a = d_convert(rng)[0]
        return f"{head}{user}: {q}\n{bot}: {a}"

    def conv(first: bool) -> str:
        turns = rng.choice(DIALOGUE_TOPICS)(rng)
        if not first:
            q, a = turns[0]
            turns[0] = (
                rng.choice(["Thanks! Different question: ", "Great. Another thing: ", "OK, next one. "]) + q,
                a,
            )
        return "\n\n".join(f"{user}: {q}\n\n{bot}: {a}" for q, a in turns)

    return grow(target, lambda: head + conv(True), lambda: conv(False))


# ============================================================================= structured


def rec_sale(rng: Rng, i: int) -> dict[str, object]:
    qty, unit = rng.randint(1, 40), round(rng.uniform(0.5, 250), 2)
    return {
        "order_id": f"SO-{rng.randint(10000, 99999)}",
        "date": date(rng),
        "store": town(rng),
        "sku": f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}-{rng.randint(10, 99)}",
        "qty": qty,
        "unit_price": unit,
        "total": round(qty * unit, 2),
        "paid": rng.random() < 0.9,
    }


def rec_sensor(rng: Rng, i: int) -> dict[str, object]:
    return {
        "ts": f"{date(rng, 2023, 2024)}T{clock(rng)}Z",
        "device": f"th-{rng.randint(1, 64):03d}",
        "temp_c": round(rng.gauss(21, 4), 2),
        "humidity": round(rng.uniform(20, 90), 1),
        "battery_v": round(rng.uniform(2.7, 3.3), 3),
        "ok": rng.random() < 0.95,
    }


def rec_employee(rng: Rng, i: int) -> dict[str, object]:
    name = person(rng)
    return {
        "id": 1000 + i,
        "name": name,
        "email": name.lower().replace(" ", ".") + "@example.org",
        "dept": rng.choice(["Finance", "Platform", "Sales", "Support", "Research", "Legal"]),
        "start": date(rng, 2005, 2024),
        "level": rng.randint(1, 7),
        "remote": rng.random() < 0.4,
    }


RECORDS = [rec_sale, rec_sensor, rec_employee]


def to_yaml(obj: object, indent: int = 0) -> str:
    """A minimal YAML emitter (dicts, lists, scalars) so the generator needs no third-party library."""
    pad = "  " * indent
    if isinstance(obj, dict):
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        lines = []
        for v in obj:
            if isinstance(v, dict) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
        return "\n".join(lines)
    return pad + _yaml_scalar(obj)


def _yaml_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    return json.dumps(s) if (not s or any(c in s for c in ":#{}[],&*!|>'\"%@`") or s.strip() != s) else s


def s_json(rng: Rng, target: int) -> str:
    rec = rng.choice(RECORDS)
    items: list[dict[str, object]] = []
    doc = {
        "version": f"{rng.randint(1, 3)}.{rng.randint(0, 12)}",
        "generated_at": f"{date(rng)}T{clock(rng)}Z",
        "page": rng.randint(1, 20),
        "items": items,
    }
    indent = rng.choice([2, 2, None])
    while len(json.dumps(doc, indent=indent)) < target:
        items.append(rec(rng, len(items)))
    doc["count"] = len(items)
    return json.dumps(doc, indent=indent, ensure_ascii=False)


def s_csv(rng: Rng, target: int) -> str:
    rec = rng.choice(RECORDS)
    first = rec(rng, 0)
    lines = [",".join(first)]
    i = 0
    while sum(len(x) + 1 for x in lines) < target:
        r = first if i == 0 else rec(rng, i)
        lines.append(",".join(f'"{v}"' if isinstance(v, str) and "," in v else str(v) for v in r.values()))
        i += 1
    return "\n".join(lines)


def s_yaml(rng: Rng, target: int) -> str:
    svc = rng.choice(ENTITIES) + "-" + rng.choice(["api", "worker", "gateway", "scheduler"])

    def one() -> str:
        cfg = {
            "service": {
                "name": svc,
                "port": rng.choice([8080, 9000, 5000]),
                "replicas": rng.randint(1, 12),
                "log_level": rng.choice(["debug", "info", "warning"]),
            },
            "database": {
                "host": f"db-{rng.randint(1, 9)}.internal",
                "pool_size": rng.randint(5, 50),
                "timeout_s": rng.choice([5, 10, 30]),
            },
            "features": [
                {
                    "name": f"{rng.choice(ENTITIES)}_{rng.choice(['v2', 'beta', 'cache', 'export'])}",
                    "enabled": rng.random() < 0.6,
                    "rollout_pct": rng.randint(0, 100),
                }
                for _ in range(rng.randint(1, 4))
            ],
            "schedule": [
                f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * {rng.randint(0, 6)}"
                for _ in range(rng.randint(1, 3))
            ],
        }
        return f"# config for {svc}, environment {rng.choice(['staging', 'prod', 'dev'])}\n{to_yaml(cfg)}"

    return grow(target, one, lambda: "---\n" + one(), "\n")


def s_xml(rng: Rng, target: int) -> str:
    def book() -> str:
        title = f"{cap(rng.choice(G_SUBJ))} and {rng.choice(G_OBJ)}".replace("&", "and")
        return (
            f'  <book id="bk{rng.randint(100, 999)}" lang="{rng.choice(["en", "de", "fr", "es"])}">\n'
            f"    <author>{person(rng)}</author>\n    <title>{title}</title>\n"
            f'    <year>{rng.randint(1950, 2024)}</year>\n    <price currency="EUR">{rng.randint(5, 80)}.{rng.randint(0, 99):02d}</price>\n'
            f"    <pages>{rng.randint(80, 900)}</pages>\n  </book>"
        )

    body = grow(target - 80, book, book, "\n")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<catalog updated="{date(rng)}">\n{body}\n</catalog>'


def s_logs(rng: Rng, target: int) -> str:
    style = rng.randrange(3)
    svc = rng.choice(ENTITIES) + "-svc"

    def line() -> str:
        ts = f"{date(rng, 2024, 2024)}T{clock(rng)}.{rng.randint(0, 999):03d}Z"
        if style == 0:
            lvl = rng.choices(["INFO", "DEBUG", "WARN", "ERROR"], [60, 20, 12, 8])[0]
            return (
                f"{ts} {lvl:<5} [{svc}] request_id={rng.getrandbits(48):012x} "
                f"method={rng.choice(['GET', 'POST', 'PUT', 'DELETE'])} path=/v1/{rng.choice(ENTITIES)}s/"
                f"{rng.randint(1, 99999)} status={rng.choice([200, 200, 201, 204, 400, 404, 500])} "
                f"latency_ms={rng.randint(1, 2500)}"
            )
        if style == 1:
            ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
            return (
                f"{ip} - - [{rng.randint(1, 28):02d}/{rng.choice(MONTHS)[:3]}/2024:{clock(rng)} +0000] "
                f'"GET /{rng.choice(ENTITIES)}/{rng.randint(1, 999)} HTTP/1.1" {rng.choice([200, 304, 404])} '
                f'{rng.randint(200, 90000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
            )
        return json.dumps(
            {
                "ts": ts,
                "level": rng.choice(["info", "warn", "error"]),
                "svc": svc,
                "msg": rng.choice(
                    ["cache miss", "retrying upstream", "job finished", "slow query", "connection reset"]
                ),
                "dur_ms": rng.randint(1, 9000),
            }
        )

    return grow(target, line, line, "\n")


def s_markdown(rng: Rng, target: int) -> str:
    rec = rng.choice(RECORDS)

    def table() -> str:
        rows = [rec(rng, i) for i in range(rng.randint(4, 15))]
        cols = list(rows[0])
        out = [
            f"### {cap(rng.choice(ENTITIES))} report, {date(rng)}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|",
        ]
        out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
        out.append(f"\n*Table {rng.randint(1, 9)}: {len(rows)} rows.*")
        return "\n".join(out)

    return grow(target, table, table)


STRUCTURED = [s_json, s_csv, s_yaml, s_xml, s_logs, s_markdown]


def gen_structured(rng: Rng, target: int) -> str:
    return rng.choice(STRUCTURED)(rng, max(target, 120))


# ============================================================================= driver

GENERATORS: dict[str, Callable[[Rng, int], str]] = {
    "math": gen_math,
    "code": gen_code,
    "web": gen_web,
    "knowledge": gen_knowledge,
    "chinese": gen_chinese,
    "dialogue": gen_dialogue,
    "structured": gen_structured,
}


def domain_counts(total: int) -> dict[str, int]:
    """Samples per domain from DOMAIN_WEIGHTS by largest-remainder rounding (sums exactly to total)."""
    wsum = sum(DOMAIN_WEIGHTS.values())
    exact = {d: total * w / wsum for d, w in DOMAIN_WEIGHTS.items()}
    counts = {d: int(math.floor(v)) for d, v in exact.items()}
    order = sorted(exact, key=lambda d: (-(exact[d] - counts[d]), list(DOMAIN_WEIGHTS).index(d)))
    for d in order[: total - sum(counts.values())]:
        counts[d] += 1
    return counts


def target_tokens(rng: Rng) -> int:
    """~10% short (~50 tokens), ~75% medium (200-2000, log-uniform), ~15% long (~3000)."""
    u = rng.random()
    if u < 0.10:
        return rng.randint(35, 70)
    if u < 0.85:
        return int(math.exp(rng.uniform(math.log(200), math.log(2000))))
    return rng.randint(2600, 3400)


def generate(seed: int = DEFAULT_SEED, total: int = DEFAULT_TOTAL) -> Iterator[dict[str, str]]:
    """Yield corpus records {"id", "domain", "text"} in a fixed order."""
    for domain, count in domain_counts(total).items():
        for i in range(count):
            rng = random.Random(f"{seed}:{domain}:{i}")
            tokens = target_tokens(rng)
            target = int(tokens * CHARS_PER_TOKEN[domain])
            if domain == "other_scripts":
                # only ~10 templates per language: keep these short-to-medium to limit repetition
                text = gen_other_scripts(rng, min(target, int(1200 * CHARS_PER_TOKEN[domain])), i)
            else:
                text = GENERATORS[domain](rng, target)
            yield {"id": f"{domain}-{i:04d}", "domain": domain, "text": text.strip()}


def write(path: Path, seed: int = DEFAULT_SEED, total: int = DEFAULT_TOTAL) -> int:
    """Write the corpus as JSONL (UTF-8, one record per line); returns the number of records."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for rec in generate(seed, total):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--total", type=int, default=DEFAULT_TOTAL)
    args = ap.parse_args(argv)
    n = write(args.out, args.seed, args.total)
    print(f"wrote {n} samples to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
