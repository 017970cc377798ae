"""The autoscale formula language: a subset, parsed and evaluated here (never with eval()).

Supported: statements `name = expression;` (`$Name` for the service's variables, plain names for
the formula's own); numbers, strings, the time intervals `TimeInterval_Zero/_Second/_Minute/_Hour/
_Day/_Week/_Year`; the node deallocation keywords (requeue, terminate, taskcompletion,
retaineddata); `+ - * /`, unary `-` and `!`, `< <= == != >= >`, `&&`, `||`, `cond ? a : b`;
functions avg, len, max, min, percentile, std, sum, time, val, lg, ln, log; the methods of a
sampled variable: GetSample(count | interval [, interval] [, percent]), GetSamplePercent(interval
[, interval]), GetSamplePeriod(), Count(), HistoryBeginTime(). Anything else is a FormulaError
that names it and where it is (`Line 1, Col 5: ...`), as the service reports errors.

The text is bounded (MAX_FORMULA_LENGTH), and so are nesting (MAX_DEPTH) and the expression
tree's depth (MAX_HEIGHT), so no formula can make the parser or the evaluator recurse too deep.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

MAX_FORMULA_LENGTH = 8192
MAX_DEPTH = 64     # nesting of parentheses, conditionals and unary operators, while parsing
MAX_HEIGHT = 256   # depth of the expression tree (long operator chains), before evaluating

INTERVALS = {"TimeInterval_Zero": 0.0, "TimeInterval_Second": 1.0, "TimeInterval_Minute": 60.0,
             "TimeInterval_Hour": 3600.0, "TimeInterval_Day": 86400.0, "TimeInterval_Week": 604800.0,
             "TimeInterval_Year": 31536000.0}
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")


class FormulaError(Exception):
    """A formula that cannot be parsed or evaluated; `code` is the autoScaleRun error code (the
    service's AutoScalingFormulaEvaluationError, or InsufficientSampleData)."""

    def __init__(self, message: str, line: int = 0, column: int = 0, code: str = "AutoScalingFormulaEvaluationError"):
        self.code = code
        self.detail = f"Line {line}, Col {column}: {message}" if line else message
        super().__init__(self.detail)


# ---- values ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    seconds: float


@dataclass(frozen=True)
class Timestamp:
    moment: dt.datetime


@dataclass(frozen=True)
class Keyword:
    name: str


Value = Union[float, list, str, Interval, Timestamp, Keyword, "Sampled"]


class Sampled:
    """A sampled service variable ($PendingTasks, ...): usable only through its methods."""

    def __init__(self, name: str, samples: list[tuple[dt.datetime, float]], now: dt.datetime, period: float):
        self.name = name
        self.samples = samples  # oldest first
        self.now = now
        self.period = period

    def between(self, start: float, end: float) -> list[float]:
        """Values sampled between `end` and `start` seconds ago (start >= end)."""
        low, high = self.now - dt.timedelta(seconds=start), self.now - dt.timedelta(seconds=end)
        return [value for moment, value in self.samples if low <= moment <= high]


# ---- tokens -----------------------------------------------------------------------------------------
@dataclass
class Token:
    kind: str   # number, string, name, op, end
    text: str
    line: int
    column: int


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>//[^\n]*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"[^"\n]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!?:;=(),.])
""", re.VERBOSE)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"The formula is {len(text)} characters long; at most {MAX_FORMULA_LENGTH} are allowed.")
    tokens, position, line, line_start = [], 0, 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        column = position - line_start + 1
        if match is None:
            raise FormulaError(f"Unexpected character '{text[position]}'", line, column)
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group(), line, column))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + match.group().rindex("\n") + 1
        position = match.end()
    tokens.append(Token("end", "", line, len(text) - line_start + 1))
    return tokens


# ---- syntax tree ------------------------------------------------------------------------------------------
@dataclass
class Node:
    line: int
    column: int


@dataclass
class Literal(Node):
    value: Any


@dataclass
class Name(Node):
    name: str


@dataclass
class Unary(Node):
    op: str
    operand: Node


@dataclass
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass
class Conditional(Node):
    test: Node
    then: Node
    otherwise: Node


@dataclass
class Call(Node):
    function: str
    arguments: list[Node]
    target: Optional[Node] = None  # a method call: target.function(arguments)


@dataclass
class Assignment:
    name: str
    value: Node
    line: int
    column: int


PRECEDENCE = {"||": 0, "&&": 1, "<": 2, "<=": 2, "==": 2, "!=": 2, ">=": 2, ">": 2, "+": 3, "-": 3, "*": 4, "/": 4}


class Parser:
    """Recursive descent over the tokens, one method per precedence level."""

    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    def parse(self) -> list[Assignment]:
        statements = []
        while self.peek().kind != "end":
            if self.accept(";"):
                continue
            statements.append(self.statement())
            if self.peek().kind != "end":
                self.expect(";")
        if not statements:
            token = self.peek()
            raise FormulaError("The formula has no statement", token.line, token.column)
        return statements

    # helpers
    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, text: str) -> Optional[Token]:
        token = self.peek()
        if token.kind == "op" and token.text == text:
            return self.advance()
        return None

    def expect(self, text: str) -> Token:
        token = self.accept(text)
        if token is None:
            found = self.peek()
            raise FormulaError(f"Expected '{text}' but found {_describe(found)}", found.line, found.column)
        return token

    def nested(self, parse: Callable[[], Node]) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            token = self.peek()
            raise FormulaError(f"The formula nests more than {MAX_DEPTH} levels deep", token.line, token.column)
        try:
            return parse()
        finally:
            self.depth -= 1

    # grammar
    def statement(self) -> Assignment:
        token = self.advance()
        if token.kind != "name":
            raise FormulaError(f"Expected a variable to assign but found {_describe(token)}", token.line,
                               token.column)
        self.expect("=")
        return Assignment(token.text, self.expression(), token.line, token.column)

    def expression(self) -> Node:
        return self.nested(self.conditional)

    def conditional(self) -> Node:
        test = self.binary(0)
        token = self.accept("?")
        if token is None:
            return test
        then = self.expression()
        self.expect(":")
        return Conditional(token.line, token.column, test, then, self.expression())

    def binary(self, weakest: int) -> Node:
        """Binary operators by precedence climbing (all left-associative), so nesting costs few frames."""
        left = self.unary()
        while True:
            token = self.peek()
            strength = PRECEDENCE.get(token.text) if token.kind == "op" else None
            if strength is None or strength < weakest:
                return left
            self.advance()
            left = Binary(token.line, token.column, token.text, left, self.binary(strength + 1))

    def unary(self) -> Node:
        token = self.peek()
        if token.kind == "op" and token.text in ("-", "!", "+"):
            self.advance()
            return Unary(token.line, token.column, token.text, self.nested(self.unary))
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.accept("."):
            name = self.advance()
            if name.kind != "name" or name.text.startswith("$"):
                raise FormulaError(f"Expected a method name but found {_describe(name)}", name.line, name.column)
            self.expect("(")
            node = Call(name.line, name.column, name.text, self.arguments(), target=node)
        return node

    def arguments(self) -> list[Node]:
        arguments: list[Node] = []
        if self.accept(")"):
            return arguments
        while True:
            arguments.append(self.expression())
            if self.accept(")"):
                return arguments
            self.expect(",")

    def primary(self) -> Node:
        token = self.advance()
        if token.kind == "number":
            return Literal(token.line, token.column, float(token.text))
        if token.kind == "string":
            return Literal(token.line, token.column, token.text[1:-1])
        if token.kind == "name":
            if self.accept("("):
                return Call(token.line, token.column, token.text, self.arguments())
            return Name(token.line, token.column, token.text)
        if token.kind == "op" and token.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        raise FormulaError(f"Unexpected {_describe(token)}", token.line, token.column)


def _describe(token: Token) -> str:
    return "the end of the formula" if token.kind == "end" else f"'{token.text}'"


def parse(text: str) -> list[Assignment]:
    """The formula's statements, or a FormulaError (code InvalidFormula) naming what is wrong."""
    statements = Parser(text).parse()
    for statement in statements:
        if _height(statement.value) > MAX_HEIGHT:
            raise FormulaError(f"The expression has more than {MAX_HEIGHT} operations in a chain", statement.line,
                               statement.column)
    return statements


def _height(root: Node) -> int:
    """How deep the expression tree is (counted without recursion: the evaluator recurses that deep)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = {Unary: lambda n: [n.operand], Binary: lambda n: [n.left, n.right],
                    Conditional: lambda n: [n.test, n.then, n.otherwise],
                    Call: lambda n: [*n.arguments, *([n.target] if n.target else [])]}.get(type(node), lambda n: [])(node)
        stack.extend((child, depth + 1) for child in children)
    return deepest


# ---- evaluation ---------------------------------------------------------------------------------------------
@dataclass
class Environment:
    """What a formula reads: plain service variables, sampled ones, the variables it may set."""
    now: dt.datetime
    plain: dict[str, float]
    sampled: dict[str, Sampled]
    settable: dict[str, Value]                      # $TargetDedicatedNodes, ... with their starting values
    not_provided: frozenset[str] = frozenset()      # service variables localbatch cannot honestly give
    assigned: dict[str, Value] = field(default_factory=dict)  # in order of first assignment


def evaluate(statements: list[Assignment], environment: Environment) -> dict[str, Value]:
    """Run the statements; return every variable the formula set, and the settable service ones."""
    values: dict[str, Value] = dict(environment.settable)
    for statement in statements:
        name = statement.name
        if name.startswith("$") and name not in environment.settable:
            if name in environment.plain or name in environment.sampled or name in environment.not_provided:
                raise FormulaError(f"{name} is a read-only service variable", statement.line, statement.column)
            raise FormulaError(f"Unknown service variable {name}", statement.line, statement.column)
        try:
            values[name] = _Evaluator(environment, values).value(statement.value)
        except (OverflowError, ValueError, ZeroDivisionError) as exc:  # e.g. int() of an infinite count
            raise FormulaError(f"The value of {name} cannot be computed: {exc}", statement.line,
                               statement.column) from None
        environment.assigned.setdefault(name, None)
    return values


class _Evaluator:
    def __init__(self, environment: Environment, values: dict[str, Value]):
        self.env = environment
        self.values = values

    def value(self, node: Node) -> Value:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Unary):
            operand = self.value(node.operand)
            if node.op == "!":
                return 0.0 if _truth(operand, node) else 1.0
            number = _number(operand, node, f"unary '{node.op}'")
            return -number if node.op == "-" else number
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Conditional):
            return self.value(node.then) if _truth(self.value(node.test), node) else self.value(node.otherwise)
        if isinstance(node, Call):
            return self.call(node)
        raise FormulaError("Unsupported expression", node.line, node.column)

    def name(self, node: Name) -> Value:
        name = node.name
        if name in self.values:
            return self.values[name]
        if name in self.env.plain:
            return self.env.plain[name]
        if name in self.env.sampled:
            return self.env.sampled[name]
        if name in self.env.not_provided:
            raise FormulaError(f"{name} is not provided by localbatch: local nodes report no such metric",
                               node.line, node.column)
        if name in INTERVALS:
            return Interval(INTERVALS[name])
        if name.lower() in DEALLOCATION_OPTIONS:
            return Keyword(name.lower())
        if name.startswith("$"):
            raise FormulaError(f"Unknown service variable {name}", node.line, node.column)
        raise FormulaError(f"Variable {name} is used before it is assigned", node.line, node.column)

    def binary(self, node: Binary) -> Value:
        if node.op in ("&&", "||"):
            left = _truth(self.value(node.left), node)
            if node.op == "&&" and not left:
                return 0.0
            if node.op == "||" and left:
                return 1.0
            return 1.0 if _truth(self.value(node.right), node) else 0.0
        left, right = self.value(node.left), self.value(node.right)
        if node.op in ("<", "<=", "==", "!=", ">=", ">"):
            return _compare(node, left, right)
        return _arithmetic(node, left, right)

    def call(self, node: Call) -> Value:
        if node.target is not None:
            target = self.value(node.target)
            if not isinstance(target, Sampled):
                raise FormulaError(f"{node.function}() applies to a sampled service variable", node.line, node.column)
            return _method(node, target, [self.value(argument) for argument in node.arguments])
        function = FUNCTIONS.get(node.function.lower())
        if function is None:
            raise FormulaError(f"Unknown function {node.function}", node.line, node.column)
        arguments = [self.value(argument) for argument in node.arguments]
        return function(node, arguments, self.env)


def _truth(value: Value, node: Node) -> bool:
    return _number(value, node, "a condition") != 0.0


def _number(value: Value, node: Node, what: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, Sampled):
        raise FormulaError(f"{value.name} is a sampled variable: read it with {value.name}.GetSample(...)",
                           node.line, node.column)
    raise FormulaError(f"{what} needs a number, not {_type_name(value)}", node.line, node.column)


def _type_name(value: Value) -> str:
    return {float: "a number", list: "a vector", str: "a string", Interval: "a time interval",
            Timestamp: "a timestamp", Keyword: "a keyword", Sampled: "a sampled variable"}.get(type(value), "a value")


def _finite(value: float, node: Node) -> float:
    if not math.isfinite(value):
        raise FormulaError("The result is not a finite number", node.line, node.column)
    return value


def _arithmetic(node: Binary, left: Value, right: Value) -> Value:
    try:
        return _arithmetic_of(node, left, right)
    except ZeroDivisionError:
        raise FormulaError("Division by zero", node.line, node.column) from None
    except OverflowError:
        raise FormulaError("The result is not a finite number", node.line, node.column) from None


def _arithmetic_of(node: Binary, left: Value, right: Value) -> Value:
    op = node.op
    if isinstance(left, float) and isinstance(right, float):
        return _finite(_apply(op, left, right), node)
    if isinstance(left, list) or isinstance(right, list):
        if isinstance(left, list) and isinstance(right, list):
            if len(left) != len(right):
                raise FormulaError("Vectors of different lengths", node.line, node.column)
            return [_finite(_apply(op, a, b), node) for a, b in zip(left, right)]
        if isinstance(left, list) and isinstance(right, float):
            return [_finite(_apply(op, a, right), node) for a in left]
        if isinstance(right, list) and isinstance(left, float) and op in ("+", "*", "-"):
            return [_finite(_apply(op, left, b), node) for b in right]
    if isinstance(left, Interval) and isinstance(right, Interval) and op in ("+", "-"):
        return Interval(_apply(op, left.seconds, right.seconds))
    if isinstance(left, Interval) and isinstance(right, float) and op in ("*", "/"):
        return Interval(_finite(_apply(op, left.seconds, right), node))
    if isinstance(left, float) and isinstance(right, Interval) and op == "*":
        return Interval(_finite(left * right.seconds, node))
    if isinstance(left, Timestamp) and isinstance(right, Interval) and op in ("+", "-"):
        return Timestamp(left.moment + dt.timedelta(seconds=right.seconds if op == "+" else -right.seconds))
    if isinstance(left, Timestamp) and isinstance(right, Timestamp) and op == "-":
        return Interval((left.moment - right.moment).total_seconds())
    for operand in (left, right):
        if isinstance(operand, Sampled):
            _number(operand, node, "")
    raise FormulaError(f"'{op}' does not apply to {_type_name(left)} and {_type_name(right)}", node.line, node.column)


def _apply(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # ZeroDivisionError is reported by _arithmetic


def _compare(node: Binary, left: Value, right: Value) -> float:
    pairs = {float: lambda v: v, Interval: lambda v: v.seconds, Timestamp: lambda v: v.moment, str: lambda v: v,
             Keyword: lambda v: v.name}
    if type(left) is not type(right) or type(left) not in pairs:
        if isinstance(left, Sampled) or isinstance(right, Sampled):
            _number(left if isinstance(left, Sampled) else right, node, "")
        raise FormulaError(f"'{node.op}' cannot compare {_type_name(left)} with {_type_name(right)}",
                           node.line, node.column)
    a, b = pairs[type(left)](left), pairs[type(right)](right)
    result = {"<": a < b, "<=": a <= b, "==": a == b, "!=": a != b, ">=": a >= b, ">": a > b}[node.op]
    return 1.0 if result else 0.0


# ---- functions -------------------------------------------------------------------------------------------------
def _flatten(node: Call, arguments: list[Value]) -> list[float]:
    numbers: list[float] = []
    for argument in arguments:
        if isinstance(argument, list):
            numbers.extend(argument)
        else:
            numbers.append(_number(argument, node, f"{node.function}()"))
    return numbers


def _nonempty(node: Call, arguments: list[Value]) -> list[float]:
    numbers = _flatten(node, arguments)
    if not numbers:
        raise FormulaError(f"{node.function}() of no values", node.line, node.column)
    return numbers


def _std(numbers: list[float]) -> float:
    mean = sum(numbers) / len(numbers)
    return math.sqrt(sum((n - mean) ** 2 for n in numbers) / len(numbers))


def _percentile(node: Call, arguments: list[Value], env: Environment) -> float:
    if len(arguments) != 2:
        raise FormulaError("percentile() takes a vector and a percentage", node.line, node.column)
    numbers = sorted(_nonempty(node, arguments[:1]))
    percent = _number(arguments[1], node, "percentile()")
    if not 0 <= percent <= 100:
        raise FormulaError("percentile() needs a percentage between 0 and 100", node.line, node.column)
    rank = max(1, math.ceil(percent / 100 * len(numbers)))  # nearest rank
    return numbers[rank - 1]


def _logarithm(base: Optional[float]) -> Callable[[Call, list[Value], Environment], float]:
    def function(node: Call, arguments: list[Value], env: Environment) -> float:
        if len(arguments) != 1:
            raise FormulaError(f"{node.function}() takes one number", node.line, node.column)
        number = _number(arguments[0], node, f"{node.function}()")
        if number <= 0:
            raise FormulaError(f"{node.function}() of a number that is not positive", node.line, node.column)
        return math.log(number) if base is None else math.log(number, base)
    return function


def _time(node: Call, arguments: list[Value], env: Environment) -> Timestamp:
    if arguments:
        raise FormulaError("time() with a date string is not supported by localbatch", node.line, node.column)
    return Timestamp(env.now)


def _val(node: Call, arguments: list[Value], env: Environment) -> float:
    if len(arguments) != 2 or not isinstance(arguments[0], list):
        raise FormulaError("val() takes a vector and an index", node.line, node.column)
    index = int(_number(arguments[1], node, "val()"))
    if not 0 <= index < len(arguments[0]):
        raise FormulaError(f"val() index {index} is outside the vector", node.line, node.column)
    return arguments[0][index]


FUNCTIONS: dict[str, Callable[[Call, list[Value], Environment], Value]] = {
    "avg": lambda node, args, env: (lambda n: sum(n) / len(n))(_nonempty(node, args)),
    "len": lambda node, args, env: float(len(_flatten(node, args))),
    "max": lambda node, args, env: max(_nonempty(node, args)),
    "min": lambda node, args, env: min(_nonempty(node, args)),
    "sum": lambda node, args, env: float(sum(_flatten(node, args))),
    "std": lambda node, args, env: _std(_nonempty(node, args)),
    "percentile": _percentile,
    "lg": _logarithm(2.0),
    "ln": _logarithm(None),
    "log": _logarithm(10.0),
    "time": _time,
    "val": _val,
}


def _method(node: Call, target: Sampled, arguments: list[Value]) -> Value:
    name = node.function.lower()
    if name == "count":
        return float(len(target.samples))
    if name == "getsampleperiod":
        return Interval(target.period)
    if name == "historybegintime":
        return Timestamp(target.samples[0][0] if target.samples else target.now)
    if name == "getsample":
        return _get_sample(node, target, arguments)
    if name == "getsamplepercent":
        start, end = _window(node, target, arguments, allow_percent=False)
        return 100.0 * len(target.between(start, end)) / _expected(target, start, end)
    raise FormulaError(f"Unknown method {node.function} of {target.name}", node.line, node.column)


def _window(node: Call, target: Sampled, arguments: list[Value], allow_percent: bool) -> tuple[float, float]:
    intervals = [a for a in arguments if isinstance(a, Interval)]
    others = [a for a in arguments if not isinstance(a, Interval)]
    if not 1 <= len(intervals) <= 2 or len(others) > (1 if allow_percent else 0) or arguments[0] is not intervals[0]:
        raise FormulaError(f"{target.name}.{node.function}() takes one or two time intervals"
                           + (" and an optional percentage" if allow_percent else ""), node.line, node.column)
    start = intervals[0].seconds
    end = intervals[1].seconds if len(intervals) == 2 else 0.0
    if len(intervals) == 2:
        start, end = max(start, end), min(start, end)
    return start, end


def _expected(target: Sampled, start: float, end: float) -> float:
    return max(1.0, math.floor((start - end) / target.period))


def _get_sample(node: Call, target: Sampled, arguments: list[Value]) -> list[float]:
    if len(arguments) == 1 and isinstance(arguments[0], float):
        count = int(arguments[0])
        if count < 1:
            raise FormulaError(f"{target.name}.GetSample() needs a count of at least 1", node.line, node.column)
        values = [value for _, value in target.samples[-count:]]
        if len(values) < count:
            raise FormulaError(f"Insufficient data from data set: {target.name} wanted {count} samples, "
                               f"received {len(values)}", node.line, node.column, "InsufficientSampleData")
        return values[::-1]  # newest first
    start, end = _window(node, target, arguments, allow_percent=True)
    percent = arguments[-1] if isinstance(arguments[-1], float) else None
    values = target.between(start, end)
    received = 100.0 * len(values) / _expected(target, start, end)
    if percent is not None and received < percent:
        raise FormulaError(f"Insufficient data from data set: {target.name} wanted {percent:g}%, "
                           f"received {min(100.0, received):.0f}%", node.line, node.column, "InsufficientSampleData")
    return values[::-1]


def format_value(value: Value) -> str:
    """How autoScaleRun.results writes a value."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, list):
        return "{" + ",".join(format_value(v) for v in value) + "}"
    if isinstance(value, Interval):
        return f"{value.seconds:g}s"
    if isinstance(value, Timestamp):
        return value.moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, Keyword):
        return value.name
    if isinstance(value, Sampled):
        return value.name
    return str(value)
