//! wmail is Apache-2.0: no dependency may be licensed only under a GPL-family licence
//! (GPL, AGPL, LGPL). A dependency offering a permissive alternative (`MIT OR GPL-2.0`) is fine.

use std::process::Command;

/// Returns whether an SPDX expression leaves a non-copyleft choice.
fn has_permissive_choice(expression: &str) -> bool {
    let normalized = expression.replace('/', " OR ");
    normalized.split(" OR ").any(|alternative| {
        // Every licence joined by AND in this alternative must be non-copyleft.
        alternative
            .split(" AND ")
            .map(|part| part.trim_matches(|c: char| c == '(' || c == ')' || c.is_whitespace()))
            .all(|licence| !licence.to_ascii_uppercase().contains("GPL"))
    })
}

#[test]
fn licence_expressions_are_judged_correctly() {
    assert!(has_permissive_choice("MIT OR Apache-2.0"));
    assert!(has_permissive_choice("MIT/Apache-2.0"));
    assert!(has_permissive_choice("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(has_permissive_choice("Apache-2.0 OR LGPL-2.1-or-later OR MIT"));
    assert!(!has_permissive_choice("AGPL-3.0-only"));
    assert!(!has_permissive_choice("GPL-2.0 AND MIT"));
    assert!(!has_permissive_choice("LGPL-3.0"));
}

#[test]
fn no_dependency_is_gpl_only() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(crate::crate_dir().join("../Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata json");
    let mut offenders = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default();
        match package["license"].as_str() {
            Some(licence) if has_permissive_choice(licence) => {}
            Some(licence) => offenders.push(format!("{name}: {licence}")),
            None if package["source"].is_null() => {} // our own crates inherit Apache-2.0
            None => offenders.push(format!("{name}: no licence field (check its licence file)")),
        }
    }
    assert!(offenders.is_empty(), "copyleft or unknown licences: {offenders:#?}");
}
