//! A small recursive-descent evaluator for arithmetic expressions.
//!
//! Grammar (lowest precedence first):
//! `sum = product (("+" | "-") product)*`,
//! `product = power (("*" | "/" | "%") power)*`,
//! `power = unary ("^" power)?` (right-associative),
//! `unary = "-" unary | atom`,
//! `atom = number | "(" sum ")" | name "(" sum ")" | "pi" | "e"`.

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 200;

pub fn evaluate(text: &str) -> Result<f64, String> {
    let mut parser = Parser {
        chars: text.char_indices().peekable(),
        text,
        depth: 0,
    };
    let value = parser.sum()?;
    parser.skip_space();
    match parser.chars.peek() {
        None => Ok(value),
        Some(&(at, c)) => Err(format!("unexpected `{c}` at position {at}")),
    }
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
    depth: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn eat(&mut self, want: char) -> bool {
        self.skip_space();
        if self.chars.peek().is_some_and(|&(_, c)| c == want) {
            self.chars.next();
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            ));
        }
        let mut value = self.product()?;
        loop {
            if self.eat('+') {
                value += self.product()?;
            } else if self.eat('-') {
                value -= self.product()?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(value)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.power()?;
        loop {
            if self.eat('*') {
                value *= self.power()?;
            } else if self.eat('/') {
                let divisor = self.power()?;
                if divisor == 0.0 {
                    return Err("division by zero".into());
                }
                value /= divisor;
            } else if self.eat('%') {
                let divisor = self.power()?;
                if divisor == 0.0 {
                    return Err("remainder by zero".into());
                }
                value %= divisor;
            } else {
                break;
            }
        }
        Ok(value)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.eat('^') {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(format!(
                    "the expression nests deeper than {MAX_DEPTH} levels"
                ));
            }
            let exponent = self.power()?;
            self.depth -= 1;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        if self.eat('-') {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(format!(
                    "the expression nests deeper than {MAX_DEPTH} levels"
                ));
            }
            let v = self.unary()?;
            self.depth -= 1;
            return Ok(-v);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<f64, String> {
        self.skip_space();
        let Some(&(start, c)) = self.chars.peek() else {
            return Err("the expression ends too early".into());
        };
        if c == '(' {
            self.chars.next();
            let value = self.sum()?;
            if !self.eat(')') {
                return Err(format!("missing `)` for the `(` at position {start}"));
            }
            return Ok(value);
        }
        if c.is_ascii_digit() || c == '.' {
            let mut end = start;
            while let Some(&(i, c)) = self.chars.peek() {
                let exponent_sign =
                    (c == '-' || c == '+') && self.text[start..i].ends_with(['e', 'E']);
                if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exponent_sign {
                    end = i + c.len_utf8();
                    self.chars.next();
                } else {
                    break;
                }
            }
            let literal = &self.text[start..end];
            return literal
                .parse()
                .map_err(|_| format!("`{literal}` at position {start} is not a number"));
        }
        if c.is_ascii_alphabetic() {
            let mut end = start;
            while let Some(&(i, c)) = self.chars.peek() {
                if c.is_ascii_alphanumeric() {
                    end = i + 1;
                    self.chars.next();
                } else {
                    break;
                }
            }
            let name = &self.text[start..end];
            match name {
                "pi" => return Ok(std::f64::consts::PI),
                "e" => return Ok(std::f64::consts::E),
                _ => {}
            }
            let function: fn(f64) -> f64 = match name {
                "sqrt" => f64::sqrt,
                "abs" => f64::abs,
                "ln" => f64::ln,
                "log10" => f64::log10,
                "round" => f64::round,
                _ => return Err(format!("unknown name `{name}` at position {start}")),
            };
            if !self.eat('(') {
                return Err(format!("`{name}` at position {start} needs `(`"));
            }
            let argument = self.sum()?;
            if !self.eat(')') {
                return Err(format!("missing `)` after the argument of `{name}`"));
            }
            return Ok(function(argument));
        }
        Err(format!("unexpected `{c}` at position {start}"))
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(evaluate("1 + 2 * 3"), Ok(7.0));
        assert_eq!(evaluate("2 ^ 3 ^ 2"), Ok(512.0));
        assert_eq!(evaluate("-2 ^ 2"), Ok(4.0));
        assert_eq!(evaluate("(1 + 2) * 3"), Ok(9.0));
        assert_eq!(evaluate("10 % 4"), Ok(2.0));
        assert_eq!(evaluate("1.5e3 + 1e-3"), Ok(1500.001));
    }

    #[test]
    fn errors_name_the_position() {
        assert!(evaluate("1 +").unwrap_err().contains("ends"));
        assert!(evaluate("1 + x").unwrap_err().contains("position 4"));
        assert!(evaluate("(1").unwrap_err().contains("missing"));
        assert!(evaluate(&"(".repeat(1000)).unwrap_err().contains("deeper"));
    }
}
