//! The shipped UCI Online Retail data set: every real stock code survives the trip into a
//! subject and back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;

use ledger::Subject;
use ledger::subject::{escape_token, unescape_token};
use ledger::values::Sku;

fn stock_codes() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/uci-online-retail/online_retail_all.csv.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut codes = BTreeSet::new();
    for line in reader.lines().skip(1) {
        let line = line.unwrap();
        // InvoiceNo and StockCode never contain commas or quotes.
        let code = line.split(',').nth(1).expect("a StockCode column");
        codes.insert(code.to_owned());
    }
    codes
}

#[test]
fn every_uci_stock_code_round_trips_through_a_subject() {
    // Goal: the 4,070 real codes (lower-case variants and `BANK CHARGES` included) are valid
    // SKUs, escape to legal tokens, and come back unchanged, with no two codes colliding.
    let codes = stock_codes();
    assert_eq!(codes.len(), 4070);
    let mut tokens = BTreeSet::new();
    for code in &codes {
        let sku = Sku::new(code.as_str()).unwrap();
        let token = escape_token(sku.as_str());
        assert!(
            !token.is_empty() && !token.contains(['.', '*', '>', ' ', '\t']),
            "{code:?} -> {token:?}"
        );
        assert_eq!(unescape_token(&token).unwrap(), *code);
        let subject = Subject::Stock(sku);
        assert_eq!(
            Subject::parse_relative(&subject.relative()).unwrap(),
            subject
        );
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), codes.len());
    assert!(codes.contains("15056bl") && codes.contains("15056BL"));
    assert!(codes.contains("BANK CHARGES"));
    assert_eq!(escape_token("BANK CHARGES"), "BANK=20CHARGES");
}
