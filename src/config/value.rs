//! One TOML value read into a typed setting with where it was written, or
//! into a diagnostic naming the file, line, column and key. Below both the
//! key table (which reads each shared key by its kind) and the walk of the
//! file (which finds the keys).

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Diagnostic;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(super) struct Sp<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// A TOML value with where it was written.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// Turns byte offsets into line/column diagnostics for one file.
pub(super) struct Locator<'a> {
    file: PathBuf,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        Locator {
            file: file.to_path_buf(),
            text,
        }
    }

    /// A diagnostic at `span` (`None`: no position, e.g. a missing key).
    pub fn diag(
        &self,
        span: Option<&Range<usize>>,
        context: &str,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.map_or((0, 0), |s| self.line_col(s.start));
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            context: context.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

/// Reads values, reporting each one of the wrong type.
pub(super) struct Values<'a, 'b> {
    pub loc: &'a Locator<'a>,
    pub errors: &'b mut Vec<Diagnostic>,
}

impl Values<'_, '_> {
    /// A diagnostic at `span`.
    pub(super) fn error(
        &mut self,
        span: &Range<usize>,
        context: &str,
        key: &str,
        msg: impl Into<String>,
    ) {
        let d = self.loc.diag(Some(span), context, key, msg);
        self.errors.push(d);
    }

    pub(super) fn table<'v, 'i>(
        &mut self,
        v: &'v Value<'i>,
        ctx: &str,
        key: &str,
    ) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be a table, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(Sp {
                value: s.to_string(),
                span: v.span(),
            }),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// `machine`: one name, or a list of them (the first, and the rest).
    pub(super) fn machines(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
    ) -> (Option<Sp<String>>, Vec<Sp<String>>) {
        let DeValue::Array(items) = v.get_ref() else {
            return (self.string(v, ctx, "machine"), Vec::new());
        };
        if items.is_empty() {
            self.error(&v.span(), ctx, "machine", "must name at least one machine");
            return (None, Vec::new());
        }
        let mut names: Vec<Sp<String>> = items
            .iter()
            .filter_map(|item| self.string(item, ctx, "machine"))
            .collect();
        if names.len() < items.len() {
            return (None, Vec::new());
        }
        let first = names.remove(0);
        (Some(first), names)
    }

    /// One name or a list of names (possibly empty).
    pub(super) fn names(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
    ) -> Option<Sp<Vec<Sp<String>>>> {
        let items: Vec<Option<Sp<String>>> = match v.get_ref() {
            DeValue::Array(items) => items.iter().map(|i| self.string(i, ctx, key)).collect(),
            _ => vec![self.string(v, ctx, key)],
        };
        Some(Sp {
            value: items.into_iter().collect::<Option<Vec<_>>>()?,
            span: v.span(),
        })
    }

    /// A string, or an integer kept as its decimal text.
    pub(super) fn string_or_integer(
        &mut self,
        v: &Value<'_>,
        ctx: &str,
        key: &str,
    ) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, ctx, key).map(|i| Sp {
                value: i.value.to_string(),
                span: i.span,
            }),
            _ => self.string(v, ctx, key),
        }
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<bool>> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp {
                value: *b,
                span: v.span(),
            }),
            other => {
                self.error(
                    &v.span(),
                    ctx,
                    key,
                    format!("must be true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, ctx: &str, key: &str) -> Option<Sp<i64>> {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let digits = digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                i64::from_str_radix(digits, i.radix()).map_err(|_| "is out of range".to_string())
            }
            other => Err(format!("must be an integer, found {}", kind(other))),
        };
        match parsed {
            Ok(value) => Some(Sp {
                value,
                span: v.span(),
            }),
            Err(msg) => {
                self.error(&v.span(), ctx, key, msg);
                None
            }
        }
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
