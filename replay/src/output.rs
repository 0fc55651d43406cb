//! Rendering replayed rows and diffs as a table, JSON or CSV.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::engine::{Built, Diff};
use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Which rows to show: a key prefix and `field=value` conditions on top-level fields.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub key_prefix: Option<String>,
    pub fields: Vec<(String, String)>,
}

impl Filter {
    /// Parses `field=value` conditions.
    pub fn new(key_prefix: Option<String>, conditions: &[String]) -> Result<Filter, String> {
        let fields = conditions
            .iter()
            .map(|c| {
                c.split_once('=')
                    .map(|(f, v)| (f.trim().to_owned(), v.to_owned()))
                    .filter(|(f, _)| !f.is_empty())
                    .ok_or_else(|| {
                        format!("--where `{c}`: expected field=value, e.g. location=WH1")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { key_prefix, fields })
    }

    fn keeps(&self, key: &str, value: Option<&Value>) -> bool {
        if self
            .key_prefix
            .as_ref()
            .is_some_and(|p| !key.starts_with(p.as_str()))
        {
            return false;
        }
        self.fields.iter().all(|(field, wanted)| {
            value
                .and_then(|v| v.get(field))
                .is_some_and(|v| cell(v) == *wanted)
        })
    }
}

/// The rows of a model at its point, filtered, by key.
pub fn rows<M: Model>(built: &Built<M>, filter: &Filter) -> Vec<(String, Value)> {
    built
        .keys
        .iter()
        .filter_map(|key| built.model.value(key).map(|v| (key.clone(), v)))
        .filter(|(key, v)| filter.keeps(key, Some(v)))
        .collect()
}

pub fn diffs(diffs: Vec<Diff>, filter: &Filter) -> Vec<Diff> {
    diffs
        .into_iter()
        .filter(|d| filter.keeps(&d.key, d.after.as_ref().or(d.before.as_ref())))
        .collect()
}

/// A value as a table or CSV cell: strings bare, everything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Top-level fields of the rows, in first-seen order.
fn columns<'a>(values: impl Iterator<Item = &'a Value>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut columns = Vec::new();
    for value in values {
        if let Value::Object(map) = value {
            for field in map.keys() {
                if seen.insert(field.clone()) {
                    columns.push(field.clone());
                }
            }
        }
    }
    columns
}

fn row_cells(key: &str, value: &Value, columns: &[String]) -> Vec<String> {
    let mut cells = vec![key.to_owned()];
    match value {
        Value::Object(map) => cells.extend(
            columns
                .iter()
                .map(|c| map.get(c).map(cell).unwrap_or_default()),
        ),
        other => cells.push(cell(other)),
    }
    cells
}

/// Renders rows with a header line saying which point they show.
pub fn render_rows(format: Format, point: &str, rows: &[(String, Value)]) -> String {
    match format {
        Format::Json => {
            let rows: Vec<Value> = rows
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            serde_json::to_string_pretty(&json!({"point": point, "rows": rows})).expect("json")
        }
        Format::Csv => {
            let (header, body) = grid(rows);
            csv(&header, &body)
        }
        Format::Table => {
            // One table per kind of row (the key's first token: `loc`, `chan`, `ord`, ...).
            let mut out = String::new();
            let _ = writeln!(out, "# {point}: {} rows", rows.len());
            let mut start = 0;
            while start < rows.len() {
                let kind = kind_of(&rows[start].0);
                let len = rows[start..]
                    .iter()
                    .take_while(|(k, _)| kind_of(k) == kind)
                    .count();
                let (header, body) = grid(&rows[start..start + len]);
                if start > 0 {
                    out.push('\n');
                }
                out.push_str(&table(&header, &body));
                start += len;
            }
            out
        }
    }
}

fn kind_of(key: &str) -> &str {
    key.split('.').next().unwrap_or(key)
}

/// The header (`key` and the fields) and the cells of rows.
fn grid(rows: &[(String, Value)]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut columns = columns(rows.iter().map(|(_, v)| v));
    if columns.is_empty() {
        columns.push("value".into());
    }
    let header = std::iter::once("key".to_owned())
        .chain(columns.iter().cloned())
        .collect();
    let body = rows
        .iter()
        .map(|(k, v)| row_cells(k, v, &columns))
        .collect();
    (header, body)
}

/// Renders a diff: one line per changed field of each changed row, with the events behind it.
pub fn render_diff(format: Format, from: &str, to: &str, diffs: &[Diff]) -> String {
    match format {
        Format::Json => {
            serde_json::to_string_pretty(&json!({"from": from, "to": to, "changes": diffs}))
                .expect("json")
        }
        Format::Table | Format::Csv => {
            let header: Vec<String> = ["key", "field", "before", "after", "events"]
                .map(String::from)
                .to_vec();
            let mut body = Vec::new();
            for d in diffs {
                let events = d
                    .events
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                for (field, before, after) in changed_fields(d) {
                    body.push(vec![d.key.clone(), field, before, after, events.clone()]);
                }
            }
            let mut out = String::new();
            if format == Format::Table {
                let _ = writeln!(
                    out,
                    "# from {from}\n# to   {to}\n# {} rows changed",
                    diffs.len()
                );
                out.push_str(&table(&header, &body));
            } else {
                out.push_str(&csv(&header, &body));
            }
            out
        }
    }
}

/// (field, before, after) for each top-level field that differs; a row that appears or
/// disappears shows as a whole.
fn changed_fields(d: &Diff) -> Vec<(String, String, String)> {
    match (&d.before, &d.after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            fields
                .into_iter()
                .filter(|f| a.get(*f) != b.get(*f))
                .map(|f| {
                    let show = |v: Option<&Value>| v.map(cell).unwrap_or_default();
                    (f.clone(), show(a.get(f)), show(b.get(f)))
                })
                .collect()
        }
        (before, after) => {
            let show = |v: &Option<Value>| {
                v.as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(none)".into())
            };
            vec![("*".into(), show(before), show(after))]
        }
    }
}

fn table(header: &[String], body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header);
    for row in body {
        line(row);
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn csv(header: &[String], body: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in std::iter::once(header).chain(body.iter().map(Vec::as_slice)) {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        let _ = writeln!(out, "{}", fields.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = csv(
            &["key".into(), "note".into()],
            &[vec!["a".into(), "x, \"y\"".into()]],
        );
        assert_eq!(out, "key,note\na,\"x, \"\"y\"\"\"\n");
    }

    #[test]
    fn diff_lists_changed_fields_only() {
        let d = Diff {
            key: "loc.A.WH1".into(),
            before: Some(json!({"sku": "A", "on_hand": 5, "allocated": 1})),
            after: Some(json!({"sku": "A", "on_hand": 9, "allocated": 1})),
            events: vec![12],
        };
        assert_eq!(
            changed_fields(&d),
            vec![("on_hand".into(), "5".into(), "9".into())]
        );
        let gone = Diff { after: None, ..d };
        assert_eq!(changed_fields(&gone)[0].2, "(none)");
    }

    #[test]
    fn filters_need_field_equals_value() {
        assert!(Filter::new(None, &["location".into()]).is_err());
        let f = Filter::new(Some("loc.".into()), &["location=WH1".into()]).unwrap();
        assert!(f.keeps("loc.A.WH1", Some(&json!({"location": "WH1"}))));
        assert!(!f.keeps("loc.A.WH2", Some(&json!({"location": "WH2"}))));
        assert!(!f.keeps("chan.A.web", Some(&json!({"location": "WH1"}))));
    }
}
