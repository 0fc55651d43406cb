//! `schemas/` holds the JSON Schema of every type that crosses the system's edge, generated
//! from the Rust types. Goal: a change to a type that is not reflected in the committed
//! schema fails here; `ERP_BLESS_SCHEMAS=1` rewrites the files.

use std::path::Path;

fn check(name: &str, schema: schemars::Schema) {
    check_text(name, serde_json::to_string_pretty(&schema).unwrap() + "\n");
}

fn check_value(name: &str, value: serde_json::Value) {
    check_text(name, serde_json::to_string_pretty(&value).unwrap() + "\n");
}

fn check_text(name: &str, fresh: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    if std::env::var_os("ERP_BLESS_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == fresh,
        "{} is stale; run `ERP_BLESS_SCHEMAS=1 cargo test --test it schemas` and commit it",
        path.display()
    );
}

#[test]
fn view_contracts_are_current() {
    use projections::view::contract;
    for (name, value) in [
        ("ats", contract::<projections::ats::Ats>()),
        (
            "allocation",
            contract::<projections::allocation::Allocation>(),
        ),
        ("audit", contract::<projections::audit::Audit>()),
        ("margin", contract::<projections::margin::Margin>()),
        ("finance", contract::<projections::finance::Finance>()),
        (
            "replenishment",
            contract::<projections::replenish::Replenishment>(),
        ),
        (
            "exceptions",
            contract::<projections::exceptions::Exceptions>(),
        ),
        ("kpis", contract::<projections::kpis::Kpis>()),
        ("trace", contract::<projections::trace::Trace>()),
    ] {
        check_value(&format!("views/{name}.schema.json"), value);
    }
}

#[test]
fn schemas_are_current() {
    check("events.schema.json", schemars::schema_for!(ledger::Event));
    check(
        "commands.schema.json",
        schemars::schema_for!(commands::Command),
    );
    check(
        "outcome.schema.json",
        schemars::schema_for!(commands::Outcome),
    );
}

#[test]
fn the_http_and_nats_contracts_are_current() {
    check_value("openapi.json", gateway::contracts::openapi());
    check_value("asyncapi.json", gateway::contracts::asyncapi());
}
