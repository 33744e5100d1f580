//! The EventBridge detail-types agree everywhere (issue 14 item 6): the event types the code
//! writes to `edge_events` are exactly `aws::eventbridge::EVENT_TYPES`, and docs/deploy.md, the
//! SAM template and terraform name those, not an invented scheme. (aws_moto.rs sends every one
//! of them through the rule docs/deploy.md documents.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use edge_functions::aws::eventbridge::EVENT_TYPES;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `"integration.….v1"` string literal in `text`.
fn event_literals(text: &str) -> Vec<String> {
    text.match_indices("\"integration.")
        .filter_map(|(at, _)| {
            let rest = &text[at + 1..];
            let end = rest.find('"')?;
            let s = &rest[..end];
            s.ends_with(".v1").then(|| s.to_owned())
        })
        .collect()
}

#[test]
fn the_code_emits_exactly_the_listed_event_types() {
    let mut files = Vec::new();
    for crate_dir in [
        "functions/core/src",
        "functions/store/src",
        "functions/lambdas/src",
    ] {
        rust_files(&repo().join(crate_dir), &mut files);
    }
    let listed: BTreeSet<String> = EVENT_TYPES.iter().map(|s| (*s).to_owned()).collect();
    let mut emitted = BTreeSet::new();
    for f in &files {
        // The list itself does not count as emitting.
        if f.ends_with("aws/eventbridge.rs") {
            continue;
        }
        emitted.extend(event_literals(&std::fs::read_to_string(f).unwrap()));
    }
    assert_eq!(emitted, listed, "update EVENT_TYPES and docs/deploy.md §5");
}

#[test]
fn deploy_docs_and_templates_name_the_real_detail_types() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let deploy = read("docs/deploy.md");
    for t in EVENT_TYPES {
        assert!(deploy.contains(t), "docs/deploy.md does not list {t}");
    }
    for p in [
        "docs/deploy.md",
        "infra/sam/template.yaml",
        "infra/terraform/variables.tf",
    ] {
        let text = read(p);
        assert!(
            !text.contains("edge.lineage."),
            "{p} still names the edge.lineage.* scheme"
        );
        assert!(text.contains("integration.edge_"), "{p}");
    }
}
