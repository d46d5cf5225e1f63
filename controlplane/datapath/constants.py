"""The datapath's numbers, read from the C headers (bpf/lib/*.h) that the programs are built
from: drop reasons, flags, algorithm numbers, timeouts. One source: a constant changed in C is
changed here, with no copy to forget. Pure (no bcc, no kernel): the model's tests use it too.

Only object-like `#define NAME <integer expression>` lines are taken; an expression may use
integer literals (with C suffixes), other such names, parentheses and + - * / % << >> | & ~.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from pathlib import Path

BPF_LIB = Path(__file__).resolve().parents[2] / "bpf" / "lib"

_DEFINE = re.compile(r"^#define\s+(XLB_[A-Z0-9_]+)\s+(.+?)\s*(?:/\*.*)?$")
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU])\b")
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}


def _raw_defines(lib: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in sorted(lib.glob("*.h")):
        for line in header.read_text().splitlines():
            found = _DEFINE.match(line.strip())
            if found and "(" not in found.group(1):
                out[found.group(1)] = found.group(2)
    return out


def _evaluate(name: str, raw: dict[str, str], done: dict[str, int | None]) -> int | None:
    """The value of name, or None when its expression is not an integer one (a string, a
    function-like macro's body)."""
    if name in done:
        return done[name]
    done[name] = None  # a cycle evaluates to None
    text = _SUFFIX.sub(r"\1", raw[name]).replace("/", "//")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in raw:
            got = _evaluate(node.id, raw, done)
            if got is not None:
                return got
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        raise ValueError(name)

    try:
        done[name] = value(tree)
    except ValueError:
        done[name] = None
    return done[name]


@functools.cache
def defines(lib: Path = BPF_LIB) -> dict[str, int]:
    """Every integer XLB_* constant of the headers, by name."""
    raw = _raw_defines(lib)
    done: dict[str, int | None] = {}
    values = {name: _evaluate(name, raw, done) for name in raw}
    return {name: v for name, v in values.items() if v is not None}


def value(name: str) -> int:
    """One constant; a name the headers do not define is a KeyError naming it."""
    try:
        return defines()[name]
    except KeyError:
        raise KeyError(f"{name} is not an integer #define of {BPF_LIB}/*.h") from None


def prefixed(prefix: str) -> dict[str, int]:
    """The constants named prefix + X, as {x in lower case: value}, in order of value."""
    found = {n[len(prefix) :].lower(): v for n, v in defines().items() if n.startswith(prefix)}
    return dict(sorted(found.items(), key=lambda kv: kv[1]))
