//! docs/appmesh-xds.md says what happens to every App Mesh field ("Every App Mesh field"):
//! checked against the API model, so that the table cannot drift from it. Every field of the
//! seven `Create*` requests is covered by exactly one row, and every row names fields that
//! exist.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use mesh_model::{resource::Kind, schema};

/// One row: the resources it is about (None: all), its fields, each with the sub-field it
/// leaves to another row ("(but `x`)").
struct Row {
    kind: Option<Kind>,
    fields: Vec<(String, Option<String>)>,
    line: String,
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn rows() -> Vec<Row> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/appmesh-xds.md"),
    )
    .unwrap();
    let section = doc
        .split("## Every App Mesh field")
        .nth(1)
        .expect("docs/appmesh-xds.md has the section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| Resource"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let kind = match cells[0].trim_start_matches("| ") {
                "all" => None,
                name => Some(
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .unwrap_or_else(|| panic!("unknown resource {name:?} in: {line}")),
                ),
            };
            let (fields, but) = match cells[1].split_once("(but ") {
                Some((fields, but)) => (fields, backticked(but).into_iter().next()),
                None => (cells[1], None),
            };
            Row {
                kind,
                fields: backticked(fields)
                    .into_iter()
                    .map(|f| (f, but.clone()))
                    .collect(),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// Every leaf field of `shape`, as `a.b[].c`.
fn leaves(shape: &str, path: &str, out: &mut Vec<String>) {
    let shape_def = schema::model().shape(shape).unwrap();
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    match shape_def.kind.as_str() {
        "structure" => {
            for (name, member) in &shape_def.members {
                leaves(&member.shape, &join(name), out);
            }
        }
        "list" => leaves(
            &shape_def.member.as_ref().unwrap().shape,
            &format!("{path}[]"),
            out,
        ),
        _ => out.push(path.to_owned()),
    }
}

/// Whether `field` (a row's) is `leaf` or holds it.
fn holds(field: &str, leaf: &str) -> bool {
    leaf == field
        || leaf
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

#[test]
fn every_field_has_exactly_one_row_and_every_row_a_field() {
    let rows = rows();
    assert!(rows.len() > 30, "the table is there");
    let mut problems = Vec::new();
    let mut used = vec![false; rows.len()];
    for kind in Kind::ALL {
        let mut fields = Vec::new();
        leaves(&kind.create_shape(), "", &mut fields);
        for leaf in &fields {
            let covering: Vec<usize> = rows
                .iter()
                .enumerate()
                .filter(|(_, row)| row.kind.is_none_or(|k| k == kind))
                .filter(|(_, row)| {
                    row.fields.iter().any(|(field, but)| {
                        holds(field, leaf)
                            && but
                                .as_ref()
                                .is_none_or(|but| !holds(&format!("{field}.{but}"), leaf))
                    })
                })
                .map(|(index, _)| index)
                .collect();
            match covering.as_slice() {
                [one] => used[*one] = true,
                [] => problems.push(format!("{kind} {leaf}: no row")),
                many => problems.push(format!(
                    "{kind} {leaf}: {} rows: {}",
                    many.len(),
                    many.iter()
                        .map(|i| rows[*i].line.as_str())
                        .collect::<Vec<_>>()
                        .join(" / ")
                )),
            }
        }
        // Each field a row names for this kind exists in the model.
        for row in rows.iter().filter(|row| row.kind == Some(kind)) {
            for (field, but) in &row.fields {
                if !fields.iter().any(|leaf| holds(field, leaf)) {
                    problems.push(format!("{kind} {field}: not a field ({})", row.line));
                }
                if let Some(but) = but
                    && !fields
                        .iter()
                        .any(|leaf| holds(&format!("{field}.{but}"), leaf))
                {
                    problems.push(format!("{kind} {field}.{but}: not a field"));
                }
            }
        }
    }
    for (row, used) in rows.iter().zip(used) {
        if !used {
            problems.push(format!("a row that covers nothing: {}", row.line));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
