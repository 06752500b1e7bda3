// A JSON reader over bytes that accepts, refuses and reports exactly as
// serde_json 1.0 (the Rust handler's parser) does: the same error for the
// same input, at the same line and column, so a rejection reason reads the
// same whichever handler wrote it.
//
// It reads only what the handler needs (see transition.js): known fields
// are kept as a type and, for strings and timestamps, a value; everything
// else is skipped with an iterative skipper that never recurses, so a deep
// or huge payload costs one small stack entry per open bracket.

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const U64_MAX = 0xffffffffffffffffn;
const I32_MAX = 2147483647;
const I32_MIN = -2147483648;

/** A syntax error as serde_json displays it. */
export class JsonError extends Error {
  constructor(code, line, column) {
    super(line === 0 ? code : `${code} at line ${line} column ${column}`);
    this.code = code;
    this.line = line;
    this.column = column;
  }
}

const isDigit = (c) => c >= 0x30 && c <= 0x39;

function hexValue(c) {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

// ignoreBOM keeps a U+FEFF that starts a slice: it is data here.
const decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/** Reads one JSON text from `bytes` (already checked to be UTF-8). */
export class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.index = 0;
  }

  // --- positions and errors -------------------------------------------------

  positionOf(at) {
    let line = 1;
    let startOfLine = 0;
    for (let k = 0; k < at; k++) {
      if (this.bytes[k] === 0x0a) {
        line += 1;
        startOfLine = k + 1;
      }
    }
    return [line, at - startOfLine];
  }

  /** An error caused by the byte last consumed. */
  error(code) {
    const [line, column] = this.positionOf(this.index);
    return new JsonError(code, line, column);
  }

  /** An error caused by the byte last peeked at. */
  peekError(code) {
    const [line, column] = this.positionOf(Math.min(this.bytes.length, this.index + 1));
    return new JsonError(code, line, column);
  }

  // --- bytes ------------------------------------------------------------------

  peek() {
    return this.index < this.bytes.length ? this.bytes[this.index] : -1;
  }

  peekOrNull() {
    return this.index < this.bytes.length ? this.bytes[this.index] : 0;
  }

  eat() {
    this.index += 1;
  }

  next() {
    if (this.index < this.bytes.length) {
      return this.bytes[this.index++];
    }
    return -1;
  }

  nextOrNull() {
    const c = this.next();
    return c < 0 ? 0 : c;
  }

  /** Skips JSON whitespace; returns the next byte (not consumed) or -1. */
  whitespace() {
    for (;;) {
      const c = this.peek();
      if (c === 0x20 || c === 0x0a || c === 0x09 || c === 0x0d) {
        this.index += 1;
      } else {
        return c;
      }
    }
  }

  /** After the value: only whitespace may follow. */
  end() {
    if (this.whitespace() !== -1) {
      throw this.peekError('trailing characters');
    }
  }

  // --- scalars ----------------------------------------------------------------

  ident(rest) {
    for (let k = 0; k < rest.length; k++) {
      const c = this.next();
      if (c < 0) throw this.error('EOF while parsing a value');
      if (c !== rest.charCodeAt(k)) throw this.error('expected ident');
    }
  }

  skipToEscape() {
    const bytes = this.bytes;
    while (this.index < bytes.length) {
      const c = bytes[this.index];
      if (c === QUOTE || c === BACKSLASH || c < 0x20) return;
      this.index += 1;
    }
  }

  /** A string's contents after its opening quote, escapes resolved. */
  string() {
    let out = '';
    let start = this.index;
    for (;;) {
      this.skipToEscape();
      if (this.index === this.bytes.length) {
        throw this.error('EOF while parsing a string');
      }
      const c = this.bytes[this.index];
      if (c === QUOTE) {
        out += decoder.decode(this.bytes.subarray(start, this.index));
        this.index += 1;
        return out;
      }
      if (c === BACKSLASH) {
        out += decoder.decode(this.bytes.subarray(start, this.index));
        this.index += 1;
        out += this.escape();
        start = this.index;
      } else {
        this.index += 1;
        throw this.error('control character (\\u0000-\\u001F) found while parsing a string');
      }
    }
  }

  nextInString() {
    const c = this.next();
    if (c < 0) throw this.error('EOF while parsing a string');
    return c;
  }

  peekInString() {
    const c = this.peek();
    if (c < 0) throw this.error('EOF while parsing a string');
    return c;
  }

  escape() {
    const c = this.nextInString();
    switch (c) {
      case 0x22: return '"';
      case 0x5c: return '\\';
      case 0x2f: return '/';
      case 0x62: return '\b';
      case 0x66: return '\f';
      case 0x6e: return '\n';
      case 0x72: return '\r';
      case 0x74: return '\t';
      case 0x75: return this.unicodeEscape();
      default: throw this.error('invalid escape');
    }
  }

  hexEscape() {
    const bytes = this.bytes;
    if (bytes.length - this.index < 4) {
      this.index = bytes.length;
      throw this.error('EOF while parsing a string');
    }
    let value = 0;
    let valid = true;
    for (let k = 0; k < 4; k++) {
      const digit = hexValue(bytes[this.index + k]);
      if (digit < 0) valid = false;
      value = value * 16 + digit;
    }
    this.index += 4;
    if (!valid) throw this.error('invalid escape');
    return value;
  }

  unicodeEscape() {
    const n = this.hexEscape();
    if (n >= 0xdc00 && n <= 0xdfff) {
      throw this.error('lone leading surrogate in hex escape');
    }
    if (n < 0xd800 || n > 0xdbff) {
      return String.fromCharCode(n);
    }
    if (this.peekInString() !== BACKSLASH) {
      this.eat();
      throw this.error('unexpected end of hex escape');
    }
    this.eat();
    if (this.peekInString() !== 0x75) {
      this.eat();
      throw this.error('unexpected end of hex escape');
    }
    this.eat();
    const n2 = this.hexEscape();
    if (n2 < 0xdc00 || n2 > 0xdfff) {
      throw this.error('lone leading surrogate in hex escape');
    }
    return String.fromCodePoint((((n - 0xd800) << 10) | (n2 - 0xdc00)) + 0x10000);
  }

  /** Skips a string's contents after its opening quote. */
  skipString() {
    for (;;) {
      this.skipToEscape();
      if (this.index === this.bytes.length) {
        throw this.error('EOF while parsing a string');
      }
      const c = this.bytes[this.index];
      if (c === QUOTE) {
        this.index += 1;
        return;
      }
      if (c === BACKSLASH) {
        this.index += 1;
        const e = this.nextInString();
        if (e === 0x75) {
          this.hexEscape();
        } else if (!'"\\/bfnrt'.includes(String.fromCharCode(e))) {
          throw this.error('invalid escape');
        }
      } else {
        throw this.error('control character (\\u0000-\\u001F) found while parsing a string');
      }
    }
  }

  // --- numbers: parsed only to be refused where serde_json refuses them ---

  integer(positive) {
    const c = this.next();
    if (c < 0) throw this.error('EOF while parsing a value');
    if (c === 0x30) {
      if (isDigit(this.peekOrNull())) throw this.peekError('invalid number');
      return this.number(positive, 0n);
    }
    if (c >= 0x31 && c <= 0x39) {
      let significand = BigInt(c - 0x30);
      for (;;) {
        const d = this.peekOrNull();
        if (!isDigit(d)) return this.number(positive, significand);
        const digit = BigInt(d - 0x30);
        if (significand * 10n + digit > U64_MAX) {
          return this.longInteger(positive, significand);
        }
        this.eat();
        significand = significand * 10n + digit;
      }
    }
    throw this.error('invalid number');
  }

  number(positive, significand) {
    const c = this.peekOrNull();
    if (c === 0x2e) return this.decimal(positive, significand, 0);
    if (c === 0x65 || c === 0x45) return this.exponent(positive, significand, 0);
    return undefined;
  }

  decimal(positive, significand, exponentBefore) {
    this.eat();
    let after = 0;
    for (;;) {
      const d = this.peekOrNull();
      if (!isDigit(d)) break;
      const digit = BigInt(d - 0x30);
      if (significand * 10n + digit > U64_MAX) {
        return this.decimalOverflow(positive, significand, exponentBefore + after);
      }
      this.eat();
      significand = significand * 10n + digit;
      after -= 1;
    }
    if (after === 0) {
      throw this.peekError(this.peek() < 0 ? 'EOF while parsing a value' : 'invalid number');
    }
    const exponent = exponentBefore + after;
    const c = this.peekOrNull();
    if (c === 0x65 || c === 0x45) return this.exponent(positive, significand, exponent);
    return this.fromParts(significand, exponent);
  }

  exponent(positive, significand, starting) {
    this.eat();
    let positiveExp = true;
    const sign = this.peekOrNull();
    if (sign === 0x2b) {
      this.eat();
    } else if (sign === 0x2d) {
      this.eat();
      positiveExp = false;
    }
    const first = this.next();
    if (first < 0) throw this.error('EOF while parsing a value');
    if (!isDigit(first)) throw this.error('invalid number');
    let exp = first - 0x30;
    for (;;) {
      const d = this.peekOrNull();
      if (!isDigit(d)) break;
      this.eat();
      const digit = d - 0x30;
      if (exp * 10 + digit > I32_MAX) {
        return this.exponentOverflow(significand === 0n, positiveExp);
      }
      exp = exp * 10 + digit;
    }
    const total = positiveExp ? starting + exp : starting - exp;
    return this.fromParts(significand, Math.max(I32_MIN, Math.min(I32_MAX, total)));
  }

  exponentOverflow(zeroSignificand, positiveExp) {
    if (!zeroSignificand && positiveExp) throw this.error('number out of range');
    while (isDigit(this.peekOrNull())) this.eat();
    return undefined;
  }

  longInteger(positive, significand) {
    let exponent = 0;
    for (;;) {
      const c = this.peekOrNull();
      if (isDigit(c)) {
        this.eat();
        exponent += 1;
      } else if (c === 0x2e) {
        return this.decimal(positive, significand, exponent);
      } else if (c === 0x65 || c === 0x45) {
        return this.exponent(positive, significand, exponent);
      } else {
        return this.fromParts(significand, exponent);
      }
    }
  }

  decimalOverflow(positive, significand, exponent) {
    while (isDigit(this.peekOrNull())) this.eat();
    const c = this.peekOrNull();
    if (c === 0x65 || c === 0x45) return this.exponent(positive, significand, exponent);
    return this.fromParts(significand, exponent);
  }

  /** serde_json's f64 assembly, for its one outcome here: out of range or not. */
  fromParts(significand, exponent) {
    let f = Number(significand);
    for (;;) {
      const magnitude = Math.abs(exponent);
      if (magnitude <= 308) {
        const pow = Number(`1e${magnitude}`);
        if (exponent >= 0) {
          f *= pow;
          if (!Number.isFinite(f)) throw this.error('number out of range');
        } else {
          f /= pow;
        }
        return undefined;
      }
      if (f === 0) return undefined;
      if (exponent >= 0) throw this.error('number out of range');
      f /= 1e308;
      exponent += 308;
    }
  }

  skipInteger() {
    const c = this.nextOrNull();
    if (c === 0x30) {
      if (isDigit(this.peekOrNull())) throw this.peekError('invalid number');
    } else if (c >= 0x31 && c <= 0x39) {
      while (isDigit(this.peekOrNull())) this.eat();
    } else {
      throw this.error('invalid number');
    }
    const next = this.peekOrNull();
    if (next === 0x2e) {
      this.eat();
      let any = false;
      while (isDigit(this.peekOrNull())) {
        this.eat();
        any = true;
      }
      if (!any) throw this.peekError('invalid number');
      const e = this.peekOrNull();
      if (e === 0x65 || e === 0x45) this.skipExponent();
    } else if (next === 0x65 || next === 0x45) {
      this.skipExponent();
    }
  }

  skipExponent() {
    this.eat();
    const sign = this.peekOrNull();
    if (sign === 0x2b || sign === 0x2d) this.eat();
    if (!isDigit(this.nextOrNull())) throw this.error('invalid number');
    while (isDigit(this.peekOrNull())) this.eat();
  }

  // --- skipping any value, iteratively ---------------------------------------

  skipValue() {
    const open = [];
    let enclosing = 0;
    for (;;) {
      const peek = this.whitespace();
      if (peek < 0) throw this.peekError('EOF while parsing a value');
      let frame = 0;
      switch (peek) {
        case 0x6e: this.eat(); this.ident('ull'); break;
        case 0x74: this.eat(); this.ident('rue'); break;
        case 0x66: this.eat(); this.ident('alse'); break;
        case 0x2d: this.eat(); this.skipInteger(); break;
        case QUOTE: this.eat(); this.skipString(); break;
        case 0x5b:
        case 0x7b:
          if (enclosing) open.push(enclosing);
          enclosing = 0;
          this.eat();
          frame = peek;
          break;
        default:
          if (isDigit(peek)) {
            this.skipInteger();
          } else {
            throw this.peekError('expected value');
          }
      }
      let acceptComma;
      if (frame) {
        acceptComma = false;
      } else if (enclosing) {
        acceptComma = true;
        frame = enclosing;
        enclosing = 0;
      } else if (open.length > 0) {
        acceptComma = true;
        frame = open.pop();
      } else {
        return;
      }
      for (;;) {
        const c = this.whitespace();
        if (c === 0x2c && acceptComma) {
          this.eat();
          break;
        } else if ((c === 0x5d && frame === 0x5b) || (c === 0x7d && frame === 0x7b)) {
          // closes the frame: handled below
        } else if (c >= 0) {
          if (acceptComma) {
            throw this.peekError(frame === 0x5b ? 'expected `,` or `]`' : 'expected `,` or `}`');
          }
          break;
        } else {
          throw this.peekError(
            frame === 0x5b ? 'EOF while parsing a list' : 'EOF while parsing an object',
          );
        }
        this.eat();
        if (open.length === 0) return;
        frame = open.pop();
        acceptComma = true;
      }
      if (frame === 0x7b) {
        const q = this.whitespace();
        if (q === QUOTE) {
          this.eat();
        } else if (q >= 0) {
          throw this.peekError('key must be a string');
        } else {
          throw this.peekError('EOF while parsing an object');
        }
        this.skipString();
        const colon = this.whitespace();
        if (colon === 0x3a) {
          this.eat();
        } else if (colon >= 0) {
          throw this.peekError('expected `:`');
        } else {
          throw this.peekError('EOF while parsing an object');
        }
      }
      enclosing = frame;
    }
  }

  // --- containers read element by element ------------------------------------

  /** Whether another array element follows; consumes its comma. */
  hasElement(state) {
    const c = this.whitespace();
    if (c < 0) throw this.peekError('EOF while parsing a list');
    if (c === 0x5d) return false;
    if (state.first) {
      state.first = false;
      return true;
    }
    if (c === 0x2c) {
      this.eat();
      const n = this.whitespace();
      if (n === 0x5d) throw this.peekError('trailing comma');
      if (n < 0) throw this.peekError('EOF while parsing a value');
      return true;
    }
    throw this.peekError('expected `,` or `]`');
  }

  endArray() {
    const c = this.whitespace();
    if (c === 0x5d) {
      this.eat();
      return;
    }
    if (c === 0x2c) {
      this.eat();
      throw this.peekError(this.whitespace() === 0x5d ? 'trailing comma' : 'trailing characters');
    }
    throw this.peekError(c < 0 ? 'EOF while parsing a list' : 'trailing characters');
  }

  /** After `[`: skips every element and the closing bracket. */
  skipArrayBody() {
    const state = { first: true };
    while (this.hasElement(state)) this.skipValue();
    this.endArray();
  }

  /** The next key of an object (escapes resolved), or null at its end. */
  key(state) {
    const c = this.whitespace();
    if (c < 0) throw this.peekError('EOF while parsing an object');
    if (c === 0x7d) return null;
    if (state.first) {
      state.first = false;
      if (c !== QUOTE) throw this.peekError('key must be a string');
    } else if (c === 0x2c) {
      this.eat();
      const n = this.whitespace();
      if (n === 0x7d) throw this.peekError('trailing comma');
      if (n < 0) throw this.peekError('EOF while parsing a value');
      if (n !== QUOTE) throw this.peekError('key must be a string');
    } else {
      throw this.peekError('expected `,` or `}`');
    }
    this.eat();
    return this.string();
  }

  colon() {
    const c = this.whitespace();
    if (c === 0x3a) {
      this.eat();
      return;
    }
    throw this.peekError(c < 0 ? 'EOF while parsing an object' : 'expected `:`');
  }

  endObject() {
    const c = this.whitespace();
    if (c === 0x7d) {
      this.eat();
      return;
    }
    if (c === 0x2c) throw this.peekError('trailing comma');
    throw this.peekError(c < 0 ? 'EOF while parsing an object' : 'trailing characters');
  }

  /** After `{`: skips every member (keys still read as strings) and the brace. */
  skipObjectBody() {
    const state = { first: true };
    while (this.key(state) !== null) {
      this.colon();
      this.skipValue();
    }
    this.endObject();
  }

  /**
   * Any value, kept as {type} plus `value` for a string. `onObject`, if
   * given, reads an object's body instead of skipping it.
   */
  value(onObject) {
    const c = this.whitespace();
    if (c < 0) throw this.peekError('EOF while parsing a value');
    switch (c) {
      case 0x6e: this.eat(); this.ident('ull'); return { type: 'null' };
      case 0x74: this.eat(); this.ident('rue'); return { type: 'boolean' };
      case 0x66: this.eat(); this.ident('alse'); return { type: 'boolean' };
      case 0x2d: this.eat(); this.integer(false); return { type: 'number' };
      case QUOTE: this.eat(); return { type: 'string', value: this.string() };
      case 0x5b: this.eat(); this.skipArrayBody(); return { type: 'array' };
      case 0x7b: {
        this.eat();
        if (onObject) {
          const fields = onObject(this);
          this.endObject();
          return { type: 'object', fields };
        }
        this.skipObjectBody();
        return { type: 'object' };
      }
      default:
        if (isDigit(c)) {
          this.integer(true);
          return { type: 'number' };
        }
        throw this.peekError('expected value');
    }
  }

  /**
   * A value kept as it is spelled when it is a number (`1E2` stays `1E2`),
   * else as `value()` would read it from its own text.
   */
  spelled() {
    this.whitespace();
    const start = this.index;
    this.skipValue();
    const raw = this.bytes.subarray(start, this.index);
    if (raw[0] === 0x2d || isDigit(raw[0])) {
      return { type: 'number', value: decoder.decode(raw) };
    }
    const inner = new Reader(raw);
    const value = inner.value();
    inner.end();
    return value;
  }
}

/** The offset of the first byte that is not part of valid UTF-8, or -1. */
export function invalidUtf8At(bytes) {
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b0 = bytes[i];
    if (b0 < 0x80) {
      i += 1;
      continue;
    }
    let width;
    let lo = 0x80;
    let hi = 0xbf;
    if (b0 >= 0xc2 && b0 <= 0xdf) {
      width = 2;
    } else if (b0 >= 0xe0 && b0 <= 0xef) {
      width = 3;
      if (b0 === 0xe0) lo = 0xa0;
      if (b0 === 0xed) hi = 0x9f;
    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
      width = 4;
      if (b0 === 0xf0) lo = 0x90;
      if (b0 === 0xf4) hi = 0x8f;
    } else {
      return i;
    }
    if (i + 1 >= n || bytes[i + 1] < lo || bytes[i + 1] > hi) return i;
    for (let k = 2; k < width; k++) {
      if (i + k >= n || bytes[i + k] < 0x80 || bytes[i + k] > 0xbf) return i;
    }
    i += width;
  }
  return -1;
}
