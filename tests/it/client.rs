//! A Python client generated from `schemas/openapi.json` (openapi-python-client, pinned,
//! installed into `.tools/openapi-client` on first use, like the nats-server) runs the README's
//! example against a real system: a command, then a view read that waits for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::gateway::{TestGateway, live_projector};
use crate::harness::{TestNats, TestProcessor};

/// The generator's release the test pins.
const GENERATOR: &str = "openapi-python-client==0.29.1";

/// A virtual environment with the generator (and the generated client's dependencies).
fn generator_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/openapi-client");
        let generator = venv.join("bin/openapi-python-client");
        if !generator.is_file() {
            let run = |what: &str, command: &mut Command| {
                let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    output.status.success(),
                    "{what} failed (needs python3 with venv and PyPI): {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            };
            run(
                "python3 -m venv",
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
            );
            run(
                "pip install the generator",
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    GENERATOR,
                ]),
            );
        }
        venv
    })
    .clone()
}

const EXAMPLE: &str = r#"
import json, sys, uuid
from erp_client import Client
from erp_client.api.default import submit_command, get_outcome
from erp_client.api.ats import ats_get
from erp_client.models.location_define_command import LocationDefineCommand
from erp_client.models.item_define_command import ItemDefineCommand
from erp_client.models.stock_receive_command import StockReceiveCommand

client = Client(base_url=sys.argv[1], raise_on_unexpected_status=True)

def send(model, kind, data):
    body = model.from_dict({
        "command_id": str(uuid.uuid4()), "actor": {"id": "me", "role": "clerk"},
        "legal_entity": "UK01", "effective_at": "2011-06-30T09:00:00Z",
        "type": kind, "data": data,
    })
    response = submit_command.sync_detailed(client=client, body=body)
    return response.status_code, response.parsed.to_dict()

results = {}
# The README's example, then an item and a receipt of it.
results["location"] = send(LocationDefineCommand, "location.define",
                           {"location": "UK-DC", "kind": "Warehouse", "region": "UK"})
results["item"] = send(ItemDefineCommand, "item.define", {"sku": "85123A"})
status, receipt = send(StockReceiveCommand, "stock.receive",
                       {"sku": "85123A", "location": "UK-DC", "qty": 5,
                        "unit_cost": {"amount": "1.00", "currency": "GBP"}})
results["receipt"] = (status, receipt)
# The same command id again answers the first outcome.
again = get_outcome.sync_detailed(client=client, command_id=receipt["command_id"])
results["recorded"] = (int(again.status_code), again.parsed.to_dict())
# Read your write: the view answers once it has applied the receipt.
view = ats_get.sync_detailed(client=client, sku="85123A", location="UK-DC",
                             min_seq=receipt["outcome_seq"])
results["view"] = (int(view.status_code), view.parsed.to_dict())
print(json.dumps({k: [int(v[0]), v[1]] for k, v in results.items()}))
"#;

#[tokio::test]
async fn a_client_generated_from_the_openapi_document_runs_the_readme_example() {
    let _heavy = crate::harness::heavy().await;
    // Goal: the committed contract is enough for a code generator: a Python client generated
    // from it alone sends commands and reads views, with typed requests and answers.
    let venv = generator_venv();
    let out = tempfile::tempdir().unwrap();
    let generated = Command::new(venv.join("bin/openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json"))
        .arg("--output-path")
        .arg(out.path().join("erp_client"))
        .output()
        .unwrap();
    assert!(
        out.path().join("erp_client/api").is_dir(),
        "no client generated: {}",
        String::from_utf8_lossy(&generated.stdout)
    );

    let nats = TestNats::start();
    let processor = TestProcessor::start(&nats).await;
    let projector = live_projector::<projections::ats::Ats>(&nats).await;
    let gw = TestGateway::start(nats.url(), None).await;
    let script = out.path().join("example.py");
    std::fs::write(&script, EXAMPLE).unwrap();
    let base = gw.url("");
    let ran = tokio::task::spawn_blocking(move || {
        Command::new(venv.join("bin/python"))
            .arg(&script)
            .arg(base)
            .env("PYTHONPATH", script.parent().unwrap())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        ran.status.success(),
        "the example failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    for step in ["location", "item", "receipt", "recorded", "view"] {
        assert_eq!(results[step][0], 200, "{step}: {results}");
    }
    assert_eq!(results["receipt"][1]["status"], "accepted");
    assert_eq!(results["recorded"][1], results["receipt"][1]);
    assert_eq!(results["view"][1]["result"]["on_hand"], 5, "{results}");
    assert!(results["view"][1]["seq"].as_u64() >= results["receipt"][1]["outcome_seq"].as_u64());
    projector.abort();
    processor.stop().await;
}
