//! `$VAR` and `${VAR}` placeholders (as envsubst replaces them): substituted from the
//! environment or a table, or each reported with its line and column.
use crate::{load_options::Placeholders, report::Diagnostic};

/// Substitutes or reports the placeholders of `text`, which starts at line `first_line`.
pub(super) fn substitute(
    text: &str,
    first_line: usize,
    placeholders: &Placeholders,
) -> Result<String, Vec<Diagnostic>> {
    substitute_with(text, first_line, placeholders.substitutes(), |name| {
        placeholders.lookup(name)
    })
}

/// `$VAR` and `${VAR}` in `text` (as envsubst would replace them): substituted from `lookup`
/// when `substitute`, otherwise each reported with its line and column.
fn substitute_with(
    text: &str,
    first_line: usize,
    substitute: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Diagnostic>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    let mut consumed = 0;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let (name, len) = placeholder_at(&rest[dollar + 1..]).unwrap_or(("", 0));
        if name.is_empty() {
            out.push('$');
        } else {
            let (line, column) = line_column(text, consumed + dollar);
            let at = (line + first_line - 1, column);
            match (substitute, lookup(name)) {
                (true, Some(value)) => out.push_str(&value),
                (substitute, _) => problems.push(unsubstituted(name, at, substitute)),
            }
        }
        let skip = dollar + 1 + len;
        consumed += skip;
        rest = &rest[skip..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The variable named right after a `$` (`NAME` or `{NAME}`) and the bytes it takes.
fn placeholder_at(after: &str) -> Option<(&str, usize)> {
    if let Some(braced) = after.strip_prefix('{') {
        let end = braced.find('}')?;
        return is_variable(&braced[..end]).then(|| (&braced[..end], end + 2));
    }
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    is_variable(&after[..end]).then(|| (&after[..end], end))
}

/// A placeholder left in place: unset (when substituting) or found (when reporting).
fn unsubstituted(name: &str, (line, column): (usize, usize), substitute: bool) -> Diagnostic {
    if substitute {
        Diagnostic::error(format!(
            "line {line}, column {column}: environment variable {name} is not set"
        ))
    } else {
        Diagnostic::error(format!(
            "line {line}, column {column}: placeholder ${name} (substitute it with --env, as envsubst would)"
        ))
    }
}

fn is_variable(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_reported_with_position() {
        let errors = substitute_with(
            "{\n  \"a\": $HOST,\n  \"b\": \"${PORT}\"\n}",
            1,
            false,
            |_| None,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|d| d.message.clone()).collect();
        assert!(
            text[0].contains("line 2, column 8: placeholder $HOST"),
            "{text:?}"
        );
        assert!(
            text[1].contains("line 3, column 9: placeholder $PORT"),
            "{text:?}"
        );
    }

    #[test]
    fn placeholders_are_substituted() {
        let lookup = |name: &str| (name == "HOST").then(|| "\"h\"".to_owned());
        assert_eq!(
            substitute_with("x $HOST ${HOST} $5 $ end$", 1, true, lookup).unwrap(),
            "x \"h\" \"h\" $5 $ end$"
        );
        let err = substitute_with("${NOPE}", 1, true, lookup).unwrap_err();
        assert!(err[0].message.contains("NOPE is not set"));
    }
}
