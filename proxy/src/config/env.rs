//! `${VAR}` substitution, applied to the raw text of a config file before it is parsed as YAML.
//!
//! The forms are:
//!
//! | written             | becomes                                                           |
//! |---------------------|-------------------------------------------------------------------|
//! | `${NAME}`           | the value of `NAME`; an error if `NAME` is not set                |
//! | `${NAME:-default}`  | the value of `NAME` if it is set and not empty, else `default`    |
//! | `$${`               | a literal `${` (the escape)                                       |
//! | `$` anywhere else   | itself (`price: $5`, `a$b`, `$$x` stay as written)                |
//!
//! `NAME` matches `[A-Za-z_][A-Za-z0-9_]*`. A default may be empty and may contain spaces, but
//! not `}` and not another `${` (references do not nest). A reference must close on the line
//! it opens.
//!
//! Substitution is textual and happens everywhere in the file, comments included: write `$${`
//! to keep a literal `${` in a comment or a value. The value is pasted as-is, so quote the YAML
//! around it (`password: "${DB_PASSWORD}"`) when a value could contain YAML syntax such as
//! `: `, `#` or a leading `*`.
//!
//! A value (or default) containing a line break is rejected: it would shift every line number
//! after it, and config errors are reported by line. Line numbers in the substituted text are
//! therefore those of the file; columns are those of the file up to the first substitution on
//! a line.
//!
//! Every problem in the file is reported, not just the first, each with its 1-based line and
//! column (counted in characters) of the `$` that starts the reference:
//!
//! ```text
//! 14:11: environment variable "API_HOST" is not set (write ${API_HOST:-default} to give a default)
//! ```
//!
//! ```ignore
//! let text = env::substitute(&raw, |name| std::env::var(name).ok())?;
//! ```

use std::borrow::Cow;

/// One problem found while substituting; `Display` prints `line:column: message`, ready to be
/// prefixed with the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct EnvError {
    /// 1-based line of the `$` that starts the reference.
    pub line: usize,
    /// 1-based column, in characters, of the `$` that starts the reference.
    pub column: usize,
    /// What is wrong, written for an operator.
    pub message: String,
}

/// Replaces every `${NAME}` and `${NAME:-default}` in `text`, asking `lookup` for the values
/// (pass `|name| std::env::var(name).ok()` for the process environment).
///
/// Returns the text unchanged and borrowed when it contains no reference and no escape.
///
/// # Errors
///
/// Every unset variable without a default, malformed or unterminated reference, and value
/// containing a line break, in file order.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Cow<'_, str>, Vec<EnvError>> {
    if !text.contains('$') {
        return Ok(Cow::Borrowed(text));
    }

    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    // `text[copied..i]` is pending output that has not been copied to `out` yet.
    let mut copied = 0;
    let mut changed = false;
    let mut line = 1;
    let mut line_start = 0;
    let mut i = 0;

    while let Some(rest) = text.get(i..) {
        let Some(offset) = rest.find(['$', '\n', '\r']) else {
            break;
        };
        i += offset;
        let rest = &rest[offset..];

        if rest.starts_with("\r\n") {
            i += 2;
            line += 1;
            line_start = i;
            continue;
        }
        if rest.starts_with(['\n', '\r']) {
            i += 1;
            line += 1;
            line_start = i;
            continue;
        }

        // `rest` starts with `$`.
        if rest.starts_with("$${") {
            out.push_str(&text[copied..i]);
            out.push_str("${");
            changed = true;
            i += 3;
            copied = i;
            continue;
        }
        let Some(body) = rest.strip_prefix("${") else {
            // A lone `$`: left as written.
            i += 1;
            continue;
        };

        let column = text[line_start..i].chars().count() + 1;
        let error = |message: String| EnvError {
            line,
            column,
            message,
        };

        let line_end = body.find(['\n', '\r']).unwrap_or(body.len());
        let Some(close) = body[..line_end].find('}') else {
            errors.push(error(format!(
                "unterminated variable reference \"{}\": a `${{` needs a closing `}}` on the same \
                 line (write `$${{` for a literal `${{`)",
                truncate(&rest[..line_end + 2])
            )));
            // Resume just after the `${`, so that later references on the line are checked too.
            i += 2;
            continue;
        };
        let inner = &body[..close];
        let reference = &rest[..close + 3];
        i += close + 3;

        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_valid_name(name) {
            errors.push(error(format!(
                "malformed variable reference \"{}\": write ${{NAME}} or ${{NAME:-default}}, \
                 where NAME is a letter or `_` followed by letters, digits or `_`",
                truncate(reference)
            )));
            continue;
        }
        if default.is_some_and(|default| default.contains("${")) {
            errors.push(error(format!(
                "malformed variable reference \"{}\": references do not nest; a default is \
                 literal text",
                truncate(reference)
            )));
            continue;
        }

        let value = match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => Cow::Borrowed(default),
            (Some(value), _) => Cow::Owned(value),
            (None, Some(default)) => Cow::Borrowed(default),
            (None, None) => {
                errors.push(error(format!(
                    "environment variable \"{name}\" is not set (write ${{{name}:-default}} to \
                     give a default)"
                )));
                continue;
            }
        };
        if value.contains(['\n', '\r']) {
            errors.push(error(format!(
                "environment variable \"{name}\" contains a line break; substituted values must \
                 be a single line (mount multi-line content as a file and refer to its path)"
            )));
            continue;
        }

        out.push_str(&text[copied..i - reference.len()]);
        out.push_str(&value);
        changed = true;
        copied = i;
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if !changed {
        return Ok(Cow::Borrowed(text));
    }
    out.push_str(&text[copied..]);
    Ok(Cow::Owned(out))
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Shortens what an error message quotes from the file, so that one long line cannot flood the
/// log.
fn truncate(s: &str) -> Cow<'_, str> {
    const MAX_CHARS: usize = 60;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => Cow::Owned(format!("{}...", &s[..cut])),
        None => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("api.example.com".to_owned()),
            "PORT" => Some("8443".to_owned()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("a b".to_owned()),
            "MULTI" => Some("line1\nline2".to_owned()),
            "CR" => Some("a\rb".to_owned()),
            "ÜNI" => Some("never asked".to_owned()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        match substitute(text, env) {
            Ok(out) => out.into_owned(),
            Err(errors) => panic!("unexpected errors for {text:?}: {errors:?}"),
        }
    }

    fn errs(text: &str) -> Vec<EnvError> {
        match substitute(text, env) {
            Ok(out) => panic!("expected errors for {text:?}, got {out:?}"),
            Err(errors) => errors,
        }
    }

    fn one_err(text: &str) -> EnvError {
        let mut errors = errs(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[test]
    fn text_without_dollar_is_borrowed() {
        let text = "listeners:\n  - name: web\n";
        assert!(matches!(substitute(text, env), Ok(Cow::Borrowed(t)) if t == text));
    }

    #[test]
    fn text_with_only_lone_dollars_is_borrowed() {
        let text = "price: $5\nx: a$b $$c $\n";
        assert!(matches!(substitute(text, env), Ok(Cow::Borrowed(t)) if t == text));
    }

    #[test]
    fn substitutes_set_variables() {
        assert_eq!(
            ok("host: ${HOST}:${PORT}\n"),
            "host: api.example.com:8443\n"
        );
        assert_eq!(ok("${HOST}"), "api.example.com");
        assert_eq!(ok("a${PORT}b"), "a8443b");
        assert_eq!(ok("v: \"${SPACED}\""), "v: \"a b\"");
    }

    #[test]
    fn set_but_empty_variable_without_default_is_empty() {
        assert_eq!(ok("x: '${EMPTY}'"), "x: ''");
    }

    #[test]
    fn defaults() {
        assert_eq!(ok("${UNSET:-fallback}"), "fallback");
        assert_eq!(ok("${HOST:-fallback}"), "api.example.com");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("x: '${UNSET:-}'"), "x: ''");
        assert_eq!(
            ok("${UNSET:-with spaces and : colons}"),
            "with spaces and : colons"
        );
        assert_eq!(ok("${UNSET:-a:-b}"), "a:-b");
        assert_eq!(ok("${UNSET:-$HOME}"), "$HOME");
    }

    #[test]
    fn escape_produces_literal_reference() {
        assert_eq!(ok("a: $${HOST}"), "a: ${HOST}");
        assert_eq!(ok("$${"), "${");
        assert_eq!(ok("$${UNSET} ${PORT}"), "${UNSET} 8443");
        // Left to right: a lone `$`, then the escape.
        assert_eq!(ok("$$${HOST}"), "$${HOST}");
    }

    #[test]
    fn lone_dollars_are_kept_next_to_references() {
        assert_eq!(ok("$ ${PORT} $$ $x $"), "$ 8443 $$ $x $");
    }

    #[test]
    fn unset_variable_error_names_variable_and_position() {
        let e = one_err("a: 1\nhost: ${API_HOST}\n");
        assert_eq!((e.line, e.column), (2, 7));
        assert_eq!(
            e.message,
            "environment variable \"API_HOST\" is not set (write ${API_HOST:-default} to give a \
             default)"
        );
        assert_eq!(
            e.to_string(),
            "2:7: environment variable \"API_HOST\" is not set (write ${API_HOST:-default} to \
             give a default)"
        );
    }

    #[test]
    fn collects_all_errors_in_order() {
        let errors = errs("a: ${A}\nb: ${HOST} ${B} ${1X}\nc: ${C\n");
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(found, [(1, 4), (2, 12), (2, 17), (3, 4)]);
        assert!(errors[0].message.contains("\"A\" is not set"));
        assert!(errors[1].message.contains("\"B\" is not set"));
        assert!(
            errors[2]
                .message
                .starts_with("malformed variable reference \"${1X}\"")
        );
        assert!(
            errors[3]
                .message
                .starts_with("unterminated variable reference")
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = one_err("név: «${NOPE}»");
        assert_eq!((e.line, e.column), (1, 7));
    }

    #[test]
    fn crlf_and_cr_line_endings_count_lines() {
        let e = one_err("a: 1\r\nb: 2\r\nc: ${NOPE}\r\n");
        assert_eq!((e.line, e.column), (3, 4));
        let e = one_err("a: 1\rb: ${NOPE}");
        assert_eq!((e.line, e.column), (2, 4));
        assert_eq!(ok("a: ${PORT}\r\nb: 1\r\n"), "a: 8443\r\nb: 1\r\n");
    }

    #[test]
    fn malformed_names() {
        for text in [
            "${}", "${:-x}", "${1ABC}", "${A-B}", "${A:x}", "${A B}", "${ A}", "${ÜNI}", "${A.B}",
        ] {
            let e = one_err(text);
            assert!(
                e.message.starts_with("malformed variable reference"),
                "{text}: {e}"
            );
            assert_eq!((e.line, e.column), (1, 1), "{text}");
        }
    }

    #[test]
    fn nested_reference_in_default_is_malformed() {
        let errors = errs("${A:-${B}}");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("do not nest"), "{}", errors[0]);
    }

    #[test]
    fn unterminated_reference() {
        let e = one_err("a: ${HOST");
        assert_eq!((e.line, e.column), (1, 4));
        assert!(e.message.contains("\"${HOST\""), "{e}");
        // The closing brace must be on the same line.
        let errors = errs("a: ${HOST\nb: }\n");
        assert_eq!(errors.len(), 1);
        // Checking resumes after the `${`, and on the next line.
        let errors = errs("a: ${A ${B\nc: ${NOPE}");
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(found, [(1, 4), (1, 8), (2, 4)]);
        assert_eq!(one_err("${").column, 1);
    }

    #[test]
    fn values_with_line_breaks_are_rejected() {
        let e = one_err("a: 1\nb: ${MULTI}\n");
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("\"MULTI\" contains a line break"), "{e}");
        assert!(one_err("${CR}").message.contains("line break"));
        // Even when a default is given, a set value is used, and rejected.
        assert!(one_err("${MULTI:-x}").message.contains("line break"));
    }

    #[test]
    fn long_references_are_truncated_in_messages() {
        let text = format!("${{{}", "x".repeat(500));
        let e = one_err(&text);
        assert!(e.message.len() < 250, "{}", e.message);
        assert!(e.message.contains("..."));
    }

    #[test]
    fn lookup_sees_only_the_name() {
        let seen = std::cell::RefCell::new(Vec::new());
        let out = substitute("${A} ${B:-x} $${C}", |name| {
            seen.borrow_mut().push(name.to_owned());
            Some("v".to_owned())
        });
        assert_eq!(out.as_deref(), Ok("v v ${C}"));
        assert_eq!(*seen.borrow(), ["A", "B"]);
    }

    #[test]
    fn never_panics_on_awkward_input() {
        for text in [
            "$",
            "$$",
            "$$$",
            "${",
            "$${",
            "${}",
            "${:-}",
            "}",
            "${A:-",
            "${A:-}",
            "\n$\n",
            "é$é${é",
            "${\u{0}}",
            "$\r\n${",
        ] {
            let _ = substitute(text, env);
        }
    }
}
