//! The one place identifiers and literals are quoted for generated SQL.
//!
//! Table and column names come from the application's schema and may contain quotes, spaces,
//! unicode or SQL keywords; every generated statement goes through these functions so there is a
//! single rule to audit.

/// `name` as a double-quoted SQL identifier (`"` doubled), valid for any name SQLite accepts.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// `text` as a single-quoted SQL string literal (`'` doubled).
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for ch in text.chars() {
        if ch == '\'' {
            out.push('\'');
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_embedded_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("naïve 名前"), "\"naïve 名前\"");
    }
}
