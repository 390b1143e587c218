"""ARM template expressions: ``"[concat('a', parameters('b'))]"`` evaluated as Azure Resource Manager does — calls,
string and number literals, property access (``.name``) and indexing (``[0]``) — with the functions az's own
templates call (collected from Azure/azure-cli's template builders) and the common ones beside them. Pure: what an
expression needs from outside (parameters, other resources) comes from a ``Context``. A string starting ``[[`` is a
literal starting ``[``."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),.\[\]]))"
)


class TemplateError(Exception):
    """An expression overhaul cannot evaluate: the message names it and why."""


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Access:
    target: Any
    key: Any  # a str (.name) or an expression ([index])


@dataclass(frozen=True)
class Literal:
    value: Any


def tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = TOKEN.match(text, at)
        if match is None:
            raise TemplateError(f"cannot read {text[at : at + 30]!r}")
        kind = match.lastgroup or ""
        found.append((kind, match.group(kind)))
        at = match.end()
    return found


class Parser:
    def __init__(self, text: str) -> None:
        self.items = tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        item = self.peek()
        if item is None or (value is not None and item[1] != value):
            raise TemplateError(f"expected {value or 'more'} at token {self.at + 1}")
        self.at += 1
        return item

    def expression(self) -> Any:
        kind, value = self.take()
        node: Any
        if kind == "string":
            node = Literal(value[1:-1].replace("''", "'"))
        elif kind == "number":
            node = Literal(float(value) if "." in value else int(value))
        elif kind == "name":
            self.take("(")
            args: list[Any] = []
            if self.peek() != ("punct", ")"):
                args.append(self.expression())
                while self.peek() == ("punct", ","):
                    self.take(",")
                    args.append(self.expression())
            self.take(")")
            node = Call(value, tuple(args))
        else:
            raise TemplateError(f"unexpected {value!r}")
        while self.peek() in (("punct", "."), ("punct", "[")):
            if self.take()[1] == ".":
                node = Access(node, self.take()[1])
            else:
                node = Access(node, self.expression())
                self.take("]")
        return node


def parse(text: str) -> Any:
    """The expression inside ``[ ]`` (without them)."""
    parser = Parser(text)
    node = parser.expression()
    if parser.peek() is not None:
        raise TemplateError(f"unexpected {parser.peek()[1]!r} after the expression")  # type: ignore[index]
    return node


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") and not value.startswith("[[")


class Context(Protocol):
    """What expressions read from outside: the deployment's parameters and variables, and resources."""

    def parameter(self, name: str) -> Any: ...
    def variable(self, name: str) -> Any: ...
    def resource_id(self, args: Sequence[Any]) -> str: ...
    def reference(self, target: str, full: bool) -> Any: ...
    def resource_group(self) -> dict[str, Any]: ...
    def subscription(self) -> dict[str, Any]: ...
    def provider(self, namespace: str, type_: str) -> dict[str, Any]: ...
    def copy_index(self, loop: str | None) -> int: ...


def _equals(a: Any, b: Any) -> bool:
    return bool(a.lower() == b.lower()) if isinstance(a, str) and isinstance(b, str) else bool(a == b)


def _unique_string(*parts: Any) -> str:
    digest = hashlib.sha256("-".join(str(p) for p in parts).encode()).hexdigest()
    return "".join("abcdefghijklmnopqrstuvwxyz234567"[int(digest[i : i + 2], 16) % 32] for i in range(0, 26, 2))


def _union(*items: Any) -> Any:
    if all(isinstance(i, Mapping) for i in items):
        merged: dict[str, Any] = {}
        for item in items:
            merged |= dict(item)
        return merged
    out: list[Any] = []
    for item in items:
        out += [x for x in item if x not in out]
    return out


def _format(text: str, *args: Any) -> str:
    return re.sub(r"\{(\d+)\}", lambda m: str(args[int(m.group(1))]), text)


PURE: dict[str, Callable[..., Any]] = {
    "concat": lambda *a: (
        [x for part in a for x in part] if a and all(isinstance(x, list) for x in a) else "".join(str(x) for x in a)
    ),
    "format": _format,
    "tolower": lambda s: str(s).lower(),
    "toupper": lambda s: str(s).upper(),
    "string": lambda v: v if isinstance(v, str) else json.dumps(v),
    "int": int,
    "bool": lambda v: v if isinstance(v, bool) else str(v).lower() == "true",
    "equals": _equals,
    "not": lambda v: not v,
    "and": lambda *a: all(a),
    "or": lambda *a: any(a),
    "empty": lambda v: v is None or len(v) == 0,
    "length": len,
    "createarray": lambda *a: list(a),
    "createobject": lambda *a: {a[i]: a[i + 1] for i in range(0, len(a), 2)},
    "union": _union,
    "json": json.loads,
    "coalesce": lambda *a: next((x for x in a if x is not None), None),
    "contains": lambda c, v: (v in c) if not isinstance(c, str) else str(v).lower() in c.lower(),
    "replace": lambda s, old, new: str(s).replace(old, new),
    "split": lambda s, sep: str(s).split(sep) if isinstance(sep, str) else re.split("|".join(map(re.escape, sep)), s),
    "substring": lambda s, start, length=None: str(s)[start : None if length is None else start + length],
    "uniquestring": _unique_string,
    "guid": lambda *a: str(uuid.uuid5(uuid.NAMESPACE_URL, "-".join(str(x) for x in a))),
    "true": lambda: True,
    "false": lambda: False,
    "null": lambda: None,
    "first": lambda v: v[0],
    "last": lambda v: v[-1],
    "take": lambda v, n: v[:n],
    "skip": lambda v, n: v[n:],
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
    "greater": lambda a, b: a > b,
    "less": lambda a, b: a < b,
    "startswith": lambda s, p: str(s).lower().startswith(str(p).lower()),
    "endswith": lambda s, p: str(s).lower().endswith(str(p).lower()),
    "trim": lambda s: str(s).strip(),
    "base64": lambda s: __import__("base64").b64encode(str(s).encode()).decode(),
}


def _member(target: Any, key: Any) -> Any:
    """``target.key`` or ``target[key]``; object keys compare case-insensitively, as ARM's do."""
    if isinstance(target, Mapping) and isinstance(key, str):
        for name, value in target.items():
            if name.lower() == key.lower():
                return value
    elif isinstance(target, list) and isinstance(key, int) and -len(target) <= key < len(target):
        return target[key]
    raise TemplateError(f"the value has no {key!r}")


def evaluate(node: Any, context: Context) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Access):
        target = evaluate(node.target, context)
        key = node.key if isinstance(node.key, str) else evaluate(node.key, context)
        return _member(target, key)
    name = node.name.lower()
    if name == "if":  # only the branch taken is evaluated, as ARM does
        if len(node.args) != 3:
            raise TemplateError("if() takes a condition and two values")
        return evaluate(node.args[1] if evaluate(node.args[0], context) else node.args[2], context)
    args = [evaluate(a, context) for a in node.args]
    special: dict[str, Callable[[], Any]] = {
        "parameters": lambda: context.parameter(args[0]),
        "variables": lambda: context.variable(args[0]),
        "resourceid": lambda: context.resource_id(args),
        "reference": lambda: context.reference(args[0], len(args) > 2 and str(args[2]).lower() == "full"),
        "resourcegroup": context.resource_group,
        "subscription": context.subscription,
        "providers": lambda: context.provider(args[0], args[1]),
        "copyindex": lambda: _copy_index(context, args),
    }
    if name in special:
        return special[name]()
    function = PURE.get(name)
    if function is None:
        raise TemplateError(f"the function {node.name}() is not one overhaul evaluates")
    try:
        return function(*args)
    except TemplateError:
        raise
    except Exception as exc:  # a wrong argument to a function: said as the template's error
        raise TemplateError(f"{node.name}() failed: {exc}") from None


def _copy_index(context: Context, args: list[Any]) -> int:
    """copyIndex(), copyIndex(offset), copyIndex(loopName), copyIndex(loopName, offset)."""
    loop = args[0] if args and isinstance(args[0], str) else None
    offset = args[-1] if args and isinstance(args[-1], int) and not isinstance(args[-1], bool) else 0
    if len(args) > 2 or (len(args) == 2 and (loop is None or args[1] is not offset)):
        raise TemplateError("copyIndex() takes an optional loop name and an optional offset")
    if len(args) == 1 and loop is None and offset != args[0]:
        raise TemplateError("copyIndex(): the offset must be a whole number")
    return context.copy_index(loop) + offset


def expand(value: Any, context: Context) -> Any:
    """``value`` with every expression string in it evaluated (objects and arrays walked)."""
    if is_expression(value):
        return evaluate(parse(value[1:-1]), context)
    if isinstance(value, str) and value.startswith("[["):
        return value[1:]
    if isinstance(value, Mapping):
        return {k: expand(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, context) for v in value]
    return value


def functions_in(value: Any) -> list[str]:
    """Every function an expression in ``value`` calls (to refuse what overhaul cannot evaluate before acting)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Call):
            found.append(node.name)
            for arg in node.args:
                walk(arg)
        elif isinstance(node, Access):
            walk(node.target)
            if not isinstance(node.key, str):
                walk(node.key)

    def visit(item: Any) -> None:
        if is_expression(item):
            walk(parse(item[1:-1]))
        elif isinstance(item, Mapping):
            for v in item.values():
                visit(v)
        elif isinstance(item, list):
            for v in item:
                visit(v)

    visit(value)
    return found


KNOWN = frozenset(PURE) | {
    "if",
    "parameters",
    "variables",
    "resourceid",
    "reference",
    "resourcegroup",
    "subscription",
    "providers",
    "copyindex",
}
