//! Bounds on what one definition file may cost to read, checked before a parser sees it.
//!
//! libyaml (under serde_yaml) keeps one "simple key" slot per open flow collection and walks
//! all of them for every token, so `[[[[…]]]]` costs time quadratic in its depth (100 000
//! levels ran for minutes); serde_yaml's own recursion limit only applies after the whole
//! document has been scanned. The scan here follows libyaml's tokenizer closely enough to
//! find flow collections (`[`, `{`) and block nesting (indentation, `- `, `? `) outside
//! quoted scalars, comments and block scalars, in linear time, and stops at the first line
//! that nests too deeply. JSON is YAML's flow style, so the same scan bounds JSON.
use std::fmt;

/// Definition files larger than this are refused unread: a mesh definition is a few KiB,
/// and everything after reading (parsing, expansion, validation) grows with the size.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The deepest nesting of mappings and sequences accepted (App Mesh definitions nest about
/// 12 levels: a CloudFormation resource's TLS validation trust, for instance).
pub const MAX_NESTING: usize = 64;

/// Why a file is refused before parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("the file has {size} bytes; definition files are limited to {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "mappings and sequences nest more than {max} levels deep here; refusing to parse the file"
    )]
    TooDeep { line: usize, max: usize },
}

/// A quoted scalar that may span lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// A block scalar (`|`, `>`) whose content lines are being skipped.
#[derive(Clone, Copy)]
struct BlockScalar {
    /// The indentation of the collection holding it: content is indented more.
    parent: usize,
    /// The content's indentation, once known (explicit indicator or first non-empty line).
    indent: Option<usize>,
}

/// The scanner's state carried from line to line.
struct Scan {
    max: usize,
    /// Open flow collections.
    flow: usize,
    /// Columns of the open block collections.
    block: Vec<usize>,
    quote: Option<Quote>,
    block_scalar: Option<BlockScalar>,
}

impl fmt::Debug for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scan(flow {}, block {:?})", self.flow, self.block)
    }
}

/// Whether `text` nests mappings and sequences no deeper than `max`; else the 1-based line
/// where it first does.
pub fn check_nesting(text: &str, max: usize) -> Result<(), LimitError> {
    let mut scan = Scan {
        max,
        flow: 0,
        block: Vec::new(),
        quote: None,
        block_scalar: None,
    };
    for (index, line) in text.split('\n').enumerate() {
        if !scan.line(line.as_bytes()) {
            return Err(LimitError::TooDeep {
                line: index + 1,
                max,
            });
        }
    }
    Ok(())
}

fn is_blank(byte: Option<&u8>) -> bool {
    matches!(byte, None | Some(b' ' | b'\t' | b'\r'))
}

fn is_flow_indicator(byte: u8) -> bool {
    matches!(byte, b',' | b'[' | b']' | b'{' | b'}')
}

impl Scan {
    fn depth(&self) -> usize {
        self.flow + self.block.len()
    }

    /// Opens a block collection at `column` (unless the innermost one is there already).
    fn push_block(&mut self, column: usize) -> bool {
        if self.block.last().is_none_or(|&top| top < column) {
            self.block.push(column);
        }
        self.depth() <= self.max
    }

    /// Scans one line; false when it nests too deeply.
    fn line(&mut self, line: &[u8]) -> bool {
        let indentation = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line[indentation..].iter().all(|&b| is_blank(Some(&b)));
        if let Some(block) = &mut self.block_scalar {
            // libyaml: the first non-empty line sets the content's indentation (if deeper
            // than the parent); the scalar ends at the first non-empty line indented less.
            if blank {
                return true;
            }
            let indent = *block.indent.get_or_insert(indentation);
            if indent > block.parent && indentation >= indent {
                return true;
            }
            self.block_scalar = None;
        }
        let at = if let Some(quote) = self.quote {
            match skip_quoted(line, 0, quote) {
                Some(end) => {
                    self.quote = None;
                    end
                }
                None => return true,
            }
        } else {
            if blank || line.get(indentation) == Some(&b'#') {
                return true;
            }
            if line.first() == Some(&b'%') {
                return true; // a directive
            }
            if self.flow == 0 {
                // A block line: collections deeper than its indentation have ended.
                while self.block.last().is_some_and(|&top| top > indentation) {
                    self.block.pop();
                }
                if !self.push_block(indentation) {
                    return false;
                }
            }
            indentation
        };
        self.tokens(line, at, indentation)
    }

    /// The tokens of `line` from `at` (a token start).
    fn tokens(&mut self, line: &[u8], mut at: usize, indentation: usize) -> bool {
        // The indentation of the innermost block collection on this line, which a block
        // scalar's content must exceed.
        let mut parent = indentation;
        let mut last_token = at;
        while at < line.len() {
            let byte = line[at];
            let next = line.get(at + 1);
            match byte {
                b' ' | b'\t' | b'\r' => {
                    at += 1;
                    continue;
                }
                b'#' => return true,
                b'[' | b'{' => {
                    self.flow += 1;
                    if self.depth() > self.max {
                        return false;
                    }
                    at += 1;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    at += 1;
                }
                b',' => at += 1,
                b'"' | b'\'' => {
                    let quote = if byte == b'"' {
                        Quote::Double
                    } else {
                        Quote::Single
                    };
                    match skip_quoted(line, at + 1, quote) {
                        Some(end) => at = end,
                        None => {
                            self.quote = Some(quote);
                            return true;
                        }
                    }
                }
                b'-' | b'?' if is_blank(next) => {
                    if self.flow == 0 {
                        parent = at;
                        let after =
                            at + 1 + line[at + 1..].iter().take_while(|&&b| b == b' ').count();
                        if after < line.len() && !self.push_block(after) {
                            return false;
                        }
                    }
                    at += 1;
                }
                b':' if is_blank(next) || self.flow > 0 => {
                    if self.flow == 0 {
                        // `key: value`: a mapping at the key's column.
                        parent = last_token;
                        if !self.push_block(last_token) {
                            return false;
                        }
                    }
                    at += 1;
                }
                b'|' | b'>' if self.flow == 0 => {
                    let explicit = line[at + 1..]
                        .iter()
                        .take_while(|b| !is_blank(Some(b)))
                        .find_map(|b| (b'1'..=b'9').contains(b).then(|| usize::from(b - b'0')));
                    self.block_scalar = Some(BlockScalar {
                        parent,
                        indent: explicit.map(|n| parent + n),
                    });
                    return true;
                }
                b'!' | b'&' | b'*' => {
                    // A tag, anchor or alias: up to the next blank (or flow indicator).
                    at += 1;
                    while at < line.len()
                        && !is_blank(line.get(at))
                        && !(self.flow > 0 && is_flow_indicator(line[at]))
                    {
                        at += 1;
                    }
                }
                _ => {
                    last_token = at;
                    at = self.plain_scalar_end(line, at);
                }
            }
        }
        true
    }

    /// Where the plain scalar starting at `at` ends on this line (libyaml's rules: `: ` and
    /// ` #` end it; in flow context also `,[]{}`).
    fn plain_scalar_end(&self, line: &[u8], mut at: usize) -> usize {
        at += 1;
        while at < line.len() {
            let byte = line[at];
            let next = line.get(at + 1);
            if byte == b':'
                && (is_blank(next)
                    || (self.flow > 0 && next.is_some_and(|&b| is_flow_indicator(b))))
            {
                break;
            }
            if byte == b'#' && is_blank(line.get(at.wrapping_sub(1))) {
                break;
            }
            if self.flow > 0 && is_flow_indicator(byte) {
                break;
            }
            at += 1;
        }
        at
    }
}

/// The index just past the closing quote of a scalar whose content starts at `at`; `None`
/// when it continues on the next line.
fn skip_quoted(line: &[u8], mut at: usize, quote: Quote) -> Option<usize> {
    while at < line.len() {
        match (quote, line[at]) {
            (Quote::Double, b'\\') => at += 2,
            (Quote::Double, b'"') => return Some(at + 1),
            (Quote::Single, b'\'') if line.get(at + 1) == Some(&b'\'') => at += 2,
            (Quote::Single, b'\'') => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, max: usize) -> bool {
        check_nesting(text, max).is_ok()
    }

    #[test]
    fn flow_nesting_is_counted() {
        let deep = format!("a: {}{}\n", "[".repeat(70), "]".repeat(70));
        assert_eq!(
            check_nesting(&deep, MAX_NESTING),
            Err(LimitError::TooDeep { line: 1, max: 64 })
        );
        let json = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(!depth_ok(&json, 64), "64 brackets + the document");
        assert!(depth_ok(&json, 65));
        // Closed collections do not add up.
        assert!(depth_ok(&"a: [[1], [2], {b: [3]}]\n".repeat(1000), 4));
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let text = "a: x[[[[\nb: \"[[[[\"\nc: '[[['' [['\nd: |\n  [[[[[\n  ]]]\ne: 1 # [[[[\nf: \"[[\n  [[[\"\n";
        assert!(depth_ok(text, 2), "{:?}", check_nesting(text, 2));
        // Closing brackets in a quoted scalar do not hide open ones.
        let text = format!("{}\"]]]]]]]]\"{}", "[".repeat(8), "[".repeat(8));
        assert!(!depth_ok(&text, 10));
    }

    #[test]
    fn block_nesting_is_counted() {
        let mut text = String::new();
        for level in 0..10 {
            text.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        assert!(depth_ok(&text, 10), "{:?}", check_nesting(&text, 10));
        assert!(!depth_ok(&text, 9));
        assert!(!depth_ok(&format!("{}x\n", "- ".repeat(20)), 10));
        let list = "items:\n  - name: a\n    value: [1]\n  - name: b\n    tls: {mode: STRICT}\n";
        assert!(depth_ok(list, 4), "{:?}", check_nesting(list, 4));
    }

    #[test]
    fn a_block_scalar_ends_at_its_parent_indentation() {
        // Lines indented less than the key do not belong to the scalar.
        let text = format!("- key: |\n  {}\n", "[".repeat(20));
        assert!(!depth_ok(&text, 10));
        let text = format!("- key: |\n    {}\n", "[".repeat(20));
        assert!(depth_ok(&text, 10));
    }
}
