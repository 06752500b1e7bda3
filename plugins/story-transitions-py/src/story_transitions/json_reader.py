"""A JSON reader over bytes that accepts, refuses and reports exactly as
serde_json 1.0 (the Rust handler's parser) does: the same error for the same
input, at the same line and column, so a rejection reason reads the same
whichever handler wrote it.

It reads only what the handler needs (see transition.py): known fields are
kept as a type and, for strings and timestamps, a value; everything else is
skipped by an iterative skipper that never recurses, so a deep or huge
payload costs one small stack entry per open bracket.
"""

import re

QUOTE = 0x22
BACKSLASH = 0x5C
U64_MAX = (1 << 64) - 1
I32_MAX = (1 << 31) - 1
I32_MIN = -(1 << 31)
SIMPLE_ESCAPES = {
    0x22: '"',
    0x5C: "\\",
    0x2F: "/",
    0x62: "\b",
    0x66: "\f",
    0x6E: "\n",
    0x72: "\r",
    0x74: "\t",
}
WHITESPACE = (0x20, 0x0A, 0x09, 0x0D)
# A run of string bytes that need no attention: no quote, backslash or control byte.
PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')


class JsonError(Exception):
    """A syntax error as serde_json displays it."""

    def __init__(self, code: str, line: int, column: int):
        super().__init__(code if line == 0 else f"{code} at line {line} column {column}")
        self.code = code
        self.line = line
        self.column = column

    @property
    def message(self) -> str:
        return str(self)


def _is_digit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _hex_value(c: int) -> int:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


class Value:
    """A value read by type; `value` holds a string's text or a timestamp's spelling."""

    __slots__ = ("type", "value", "fields")

    def __init__(self, type_: str, value=None, fields=None):
        self.type = type_
        self.value = value
        self.fields = fields


class Reader:
    """Reads one JSON text from `data` (already checked to be UTF-8)."""

    def __init__(self, data: bytes):
        self.data = data
        self.index = 0

    # --- positions and errors ------------------------------------------------

    def position_of(self, at: int):
        start_of_line = self.data.rfind(b"\n", 0, at) + 1
        line = 1 + self.data.count(b"\n", 0, start_of_line)
        return line, at - start_of_line

    def error(self, code: str) -> JsonError:
        """An error caused by the byte last consumed."""
        return JsonError(code, *self.position_of(self.index))

    def peek_error(self, code: str) -> JsonError:
        """An error caused by the byte last peeked at."""
        return JsonError(code, *self.position_of(min(len(self.data), self.index + 1)))

    # --- bytes -----------------------------------------------------------------

    def peek(self) -> int:
        return self.data[self.index] if self.index < len(self.data) else -1

    def peek_or_null(self) -> int:
        return self.data[self.index] if self.index < len(self.data) else 0

    def eat(self) -> None:
        self.index += 1

    def next(self) -> int:
        if self.index < len(self.data):
            c = self.data[self.index]
            self.index += 1
            return c
        return -1

    def next_or_null(self) -> int:
        c = self.next()
        return 0 if c < 0 else c

    def whitespace(self) -> int:
        """Skips JSON whitespace; returns the next byte (not consumed) or -1."""
        data = self.data
        n = len(data)
        i = self.index
        while i < n and data[i] in WHITESPACE:
            i += 1
        self.index = i
        return data[i] if i < n else -1

    def end(self) -> None:
        """After the value: only whitespace may follow."""
        if self.whitespace() != -1:
            raise self.peek_error("trailing characters")

    # --- scalars -----------------------------------------------------------------

    def ident(self, rest: bytes) -> None:
        for expected in rest:
            c = self.next()
            if c < 0:
                raise self.error("EOF while parsing a value")
            if c != expected:
                raise self.error("expected ident")

    def skip_to_escape(self) -> None:
        self.index = PLAIN.match(self.data, self.index).end()

    def string(self) -> str:
        """A string's contents after its opening quote, escapes resolved."""
        parts = []
        start = self.index
        while True:
            self.skip_to_escape()
            if self.index == len(self.data):
                raise self.error("EOF while parsing a string")
            c = self.data[self.index]
            if c == QUOTE:
                parts.append(self.data[start : self.index].decode("utf-8"))
                self.index += 1
                return "".join(parts)
            if c == BACKSLASH:
                parts.append(self.data[start : self.index].decode("utf-8"))
                self.index += 1
                parts.append(self.escape())
                start = self.index
            else:
                self.index += 1
                raise self.error("control character (\\u0000-\\u001F) found while parsing a string")

    def next_in_string(self) -> int:
        c = self.next()
        if c < 0:
            raise self.error("EOF while parsing a string")
        return c

    def peek_in_string(self) -> int:
        c = self.peek()
        if c < 0:
            raise self.error("EOF while parsing a string")
        return c

    def escape(self) -> str:
        c = self.next_in_string()
        simple = SIMPLE_ESCAPES.get(c)
        if simple is not None:
            return simple
        if c == 0x75:
            return self.unicode_escape()
        raise self.error("invalid escape")

    def hex_escape(self) -> int:
        data = self.data
        if len(data) - self.index < 4:
            self.index = len(data)
            raise self.error("EOF while parsing a string")
        digits = [_hex_value(data[self.index + k]) for k in range(4)]
        self.index += 4
        if min(digits) < 0:
            raise self.error("invalid escape")
        return (digits[0] << 12) | (digits[1] << 8) | (digits[2] << 4) | digits[3]

    def unicode_escape(self) -> str:
        n = self.hex_escape()
        if 0xDC00 <= n <= 0xDFFF:
            raise self.error("lone leading surrogate in hex escape")
        if n < 0xD800 or n > 0xDBFF:
            return chr(n)
        if self.peek_in_string() != BACKSLASH:
            self.eat()
            raise self.error("unexpected end of hex escape")
        self.eat()
        if self.peek_in_string() != 0x75:
            self.eat()
            raise self.error("unexpected end of hex escape")
        self.eat()
        n2 = self.hex_escape()
        if n2 < 0xDC00 or n2 > 0xDFFF:
            raise self.error("lone leading surrogate in hex escape")
        return chr((((n - 0xD800) << 10) | (n2 - 0xDC00)) + 0x10000)

    def skip_string(self) -> None:
        """Skips a string's contents after its opening quote."""
        while True:
            self.skip_to_escape()
            if self.index == len(self.data):
                raise self.error("EOF while parsing a string")
            c = self.data[self.index]
            if c == QUOTE:
                self.index += 1
                return
            if c == BACKSLASH:
                self.index += 1
                e = self.next_in_string()
                if e == 0x75:
                    self.hex_escape()
                elif e not in SIMPLE_ESCAPES:
                    raise self.error("invalid escape")
            else:
                raise self.error("control character (\\u0000-\\u001F) found while parsing a string")

    # --- numbers: parsed only to be refused where serde_json refuses them ---

    def integer(self, positive: bool) -> None:
        c = self.next()
        if c < 0:
            raise self.error("EOF while parsing a value")
        if c == 0x30:
            if _is_digit(self.peek_or_null()):
                raise self.peek_error("invalid number")
            return self.number(positive, 0)
        if 0x31 <= c <= 0x39:
            significand = c - 0x30
            while True:
                d = self.peek_or_null()
                if not _is_digit(d):
                    return self.number(positive, significand)
                digit = d - 0x30
                if significand * 10 + digit > U64_MAX:
                    return self.long_integer(positive, significand)
                self.eat()
                significand = significand * 10 + digit
        raise self.error("invalid number")

    def number(self, positive: bool, significand: int) -> None:
        c = self.peek_or_null()
        if c == 0x2E:
            return self.decimal(positive, significand, 0)
        if c in (0x65, 0x45):
            return self.exponent(positive, significand, 0)
        return None

    def decimal(self, positive: bool, significand: int, exponent_before: int) -> None:
        self.eat()
        after = 0
        while True:
            d = self.peek_or_null()
            if not _is_digit(d):
                break
            digit = d - 0x30
            if significand * 10 + digit > U64_MAX:
                return self.decimal_overflow(positive, significand, exponent_before + after)
            self.eat()
            significand = significand * 10 + digit
            after -= 1
        if after == 0:
            raise self.peek_error("EOF while parsing a value" if self.peek() < 0 else "invalid number")
        exponent = exponent_before + after
        if self.peek_or_null() in (0x65, 0x45):
            return self.exponent(positive, significand, exponent)
        return self.from_parts(significand, exponent)

    def exponent(self, positive: bool, significand: int, starting: int) -> None:
        self.eat()
        positive_exp = True
        sign = self.peek_or_null()
        if sign == 0x2B:
            self.eat()
        elif sign == 0x2D:
            self.eat()
            positive_exp = False
        first = self.next()
        if first < 0:
            raise self.error("EOF while parsing a value")
        if not _is_digit(first):
            raise self.error("invalid number")
        exp = first - 0x30
        while True:
            d = self.peek_or_null()
            if not _is_digit(d):
                break
            self.eat()
            digit = d - 0x30
            if exp * 10 + digit > I32_MAX:
                return self.exponent_overflow(significand == 0, positive_exp)
            exp = exp * 10 + digit
        total = starting + exp if positive_exp else starting - exp
        return self.from_parts(significand, max(I32_MIN, min(I32_MAX, total)))

    def exponent_overflow(self, zero_significand: bool, positive_exp: bool) -> None:
        if not zero_significand and positive_exp:
            raise self.error("number out of range")
        while _is_digit(self.peek_or_null()):
            self.eat()
        return None

    def long_integer(self, positive: bool, significand: int) -> None:
        exponent = 0
        while True:
            c = self.peek_or_null()
            if _is_digit(c):
                self.eat()
                exponent += 1
            elif c == 0x2E:
                return self.decimal(positive, significand, exponent)
            elif c in (0x65, 0x45):
                return self.exponent(positive, significand, exponent)
            else:
                return self.from_parts(significand, exponent)

    def decimal_overflow(self, positive: bool, significand: int, exponent: int) -> None:
        while _is_digit(self.peek_or_null()):
            self.eat()
        if self.peek_or_null() in (0x65, 0x45):
            return self.exponent(positive, significand, exponent)
        return self.from_parts(significand, exponent)

    def from_parts(self, significand: int, exponent: int) -> None:
        """serde_json's f64 assembly, for its one outcome here: out of range or not."""
        f = float(significand)
        while True:
            magnitude = abs(exponent)
            if magnitude <= 308:
                power = float(f"1e{magnitude}")
                if exponent >= 0:
                    f *= power
                    if f == float("inf"):
                        raise self.error("number out of range")
                else:
                    f /= power
                return None
            if f == 0.0:
                return None
            if exponent >= 0:
                raise self.error("number out of range")
            f /= 1e308
            exponent += 308

    def skip_integer(self) -> None:
        c = self.next_or_null()
        if c == 0x30:
            if _is_digit(self.peek_or_null()):
                raise self.peek_error("invalid number")
        elif 0x31 <= c <= 0x39:
            while _is_digit(self.peek_or_null()):
                self.eat()
        else:
            raise self.error("invalid number")
        nxt = self.peek_or_null()
        if nxt == 0x2E:
            self.eat()
            any_digit = False
            while _is_digit(self.peek_or_null()):
                self.eat()
                any_digit = True
            if not any_digit:
                raise self.peek_error("invalid number")
            if self.peek_or_null() in (0x65, 0x45):
                self.skip_exponent()
        elif nxt in (0x65, 0x45):
            self.skip_exponent()

    def skip_exponent(self) -> None:
        self.eat()
        if self.peek_or_null() in (0x2B, 0x2D):
            self.eat()
        if not _is_digit(self.next_or_null()):
            raise self.error("invalid number")
        while _is_digit(self.peek_or_null()):
            self.eat()

    # --- skipping any value, iteratively --------------------------------------

    def skip_value(self) -> None:
        open_frames = []
        enclosing = 0
        while True:
            peek = self.whitespace()
            if peek < 0:
                raise self.peek_error("EOF while parsing a value")
            frame = 0
            if peek == 0x6E:
                self.eat()
                self.ident(b"ull")
            elif peek == 0x74:
                self.eat()
                self.ident(b"rue")
            elif peek == 0x66:
                self.eat()
                self.ident(b"alse")
            elif peek == 0x2D:
                self.eat()
                self.skip_integer()
            elif _is_digit(peek):
                self.skip_integer()
            elif peek == QUOTE:
                self.eat()
                self.skip_string()
            elif peek in (0x5B, 0x7B):
                if enclosing:
                    open_frames.append(enclosing)
                enclosing = 0
                self.eat()
                frame = peek
            else:
                raise self.peek_error("expected value")

            if frame:
                accept_comma = False
            elif enclosing:
                accept_comma = True
                frame = enclosing
                enclosing = 0
            elif open_frames:
                accept_comma = True
                frame = open_frames.pop()
            else:
                return

            while True:
                c = self.whitespace()
                if c == 0x2C and accept_comma:
                    self.eat()
                    break
                if (c == 0x5D and frame == 0x5B) or (c == 0x7D and frame == 0x7B):
                    pass  # closes the frame: handled below
                elif c >= 0:
                    if accept_comma:
                        raise self.peek_error(
                            "expected `,` or `]`" if frame == 0x5B else "expected `,` or `}`"
                        )
                    break
                else:
                    raise self.peek_error(
                        "EOF while parsing a list" if frame == 0x5B else "EOF while parsing an object"
                    )
                self.eat()
                if not open_frames:
                    return
                frame = open_frames.pop()
                accept_comma = True

            if frame == 0x7B:
                q = self.whitespace()
                if q == QUOTE:
                    self.eat()
                elif q >= 0:
                    raise self.peek_error("key must be a string")
                else:
                    raise self.peek_error("EOF while parsing an object")
                self.skip_string()
                colon = self.whitespace()
                if colon == 0x3A:
                    self.eat()
                elif colon >= 0:
                    raise self.peek_error("expected `:`")
                else:
                    raise self.peek_error("EOF while parsing an object")
            enclosing = frame

    # --- containers read element by element -----------------------------------

    def has_element(self, state: list) -> bool:
        """Whether another array element follows; consumes its comma."""
        c = self.whitespace()
        if c < 0:
            raise self.peek_error("EOF while parsing a list")
        if c == 0x5D:
            return False
        if state[0]:
            state[0] = False
            return True
        if c == 0x2C:
            self.eat()
            n = self.whitespace()
            if n == 0x5D:
                raise self.peek_error("trailing comma")
            if n < 0:
                raise self.peek_error("EOF while parsing a value")
            return True
        raise self.peek_error("expected `,` or `]`")

    def end_array(self) -> None:
        c = self.whitespace()
        if c == 0x5D:
            self.eat()
            return
        if c == 0x2C:
            self.eat()
            raise self.peek_error("trailing comma" if self.whitespace() == 0x5D else "trailing characters")
        raise self.peek_error("EOF while parsing a list" if c < 0 else "trailing characters")

    def skip_array_body(self) -> None:
        """After `[`: skips every element and the closing bracket."""
        state = [True]
        while self.has_element(state):
            self.skip_value()
        self.end_array()

    def key(self, state: list):
        """The next key of an object (escapes resolved), or None at its end."""
        c = self.whitespace()
        if c < 0:
            raise self.peek_error("EOF while parsing an object")
        if c == 0x7D:
            return None
        if state[0]:
            state[0] = False
            if c != QUOTE:
                raise self.peek_error("key must be a string")
        elif c == 0x2C:
            self.eat()
            n = self.whitespace()
            if n == 0x7D:
                raise self.peek_error("trailing comma")
            if n < 0:
                raise self.peek_error("EOF while parsing a value")
            if n != QUOTE:
                raise self.peek_error("key must be a string")
        else:
            raise self.peek_error("expected `,` or `}`")
        self.eat()
        return self.string()

    def colon(self) -> None:
        c = self.whitespace()
        if c == 0x3A:
            self.eat()
            return
        raise self.peek_error("EOF while parsing an object" if c < 0 else "expected `:`")

    def end_object(self) -> None:
        c = self.whitespace()
        if c == 0x7D:
            self.eat()
            return
        if c == 0x2C:
            raise self.peek_error("trailing comma")
        raise self.peek_error("EOF while parsing an object" if c < 0 else "trailing characters")

    def skip_object_body(self) -> None:
        """After `{`: skips every member (keys still read as strings) and the brace."""
        state = [True]
        while self.key(state) is not None:
            self.colon()
            self.skip_value()
        self.end_object()

    def value(self, on_object=None) -> Value:
        """Any value, by type, with a string's text. `on_object`, if given,
        reads an object's body instead of skipping it."""
        c = self.whitespace()
        if c < 0:
            raise self.peek_error("EOF while parsing a value")
        if c == 0x6E:
            self.eat()
            self.ident(b"ull")
            return Value("null")
        if c == 0x74:
            self.eat()
            self.ident(b"rue")
            return Value("boolean")
        if c == 0x66:
            self.eat()
            self.ident(b"alse")
            return Value("boolean")
        if c == 0x2D:
            self.eat()
            self.integer(False)
            return Value("number")
        if _is_digit(c):
            self.integer(True)
            return Value("number")
        if c == QUOTE:
            self.eat()
            return Value("string", self.string())
        if c == 0x5B:
            self.eat()
            self.skip_array_body()
            return Value("array")
        if c == 0x7B:
            self.eat()
            if on_object is not None:
                fields = on_object(self)
                self.end_object()
                return Value("object", fields=fields)
            self.skip_object_body()
            return Value("object")
        raise self.peek_error("expected value")

    def spelled(self) -> Value:
        """A value kept as spelled when it is a number (`1E2` stays `1E2`),
        else as `value()` reads it from its own text."""
        self.whitespace()
        start = self.index
        self.skip_value()
        raw = self.data[start : self.index]
        if raw[0] == 0x2D or _is_digit(raw[0]):
            return Value("number", raw.decode("utf-8"))
        inner = Reader(raw)
        value = inner.value()
        inner.end()
        return value
