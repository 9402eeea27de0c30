//! The project's Confluent-compatible schema registry, driven by an independent client:
//! confluent-kafka's AvroSerializer registers the schemas it writes with and frames every
//! record (magic byte 0, 4-byte schema id). A compatible new version gets a new id; an
//! incompatible one is refused with 409 and nothing is produced with it.

use std::time::Duration;

use anyhow::Result;
use tidewater_e2e::{Broker, SchemaRegistry, produce_avro};

#[test]
fn the_registry_serves_confluent_clients_and_refuses_incompatible_schemas() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    broker.create_topic("orders", 1)?;
    let registry = SchemaRegistry::start(dir.path())?;
    let schema = |name: &str, fields: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(r#"{{"type":"record","name":"Order","namespace":"shop","fields":[{fields}]}}"#),
        )?;
        Ok(path)
    };
    let v1 = schema(
        "v1.avsc",
        r#"{"name":"id","type":"long"},{"name":"note","type":"string"}"#,
    )?;
    let v2 = schema(
        "v2.avsc",
        r#"{"name":"id","type":"long"},{"name":"note","type":"string"},{"name":"coupon","type":["null","string"],"default":null}"#,
    )?;
    // `id` as a string cannot read the long ids already written: BACKWARD refuses it.
    let bad = schema(
        "bad.avsc",
        r#"{"name":"id","type":"string"},{"name":"note","type":"string"}"#,
    )?;
    let produce = |schema: &std::path::Path, records: &[String]| {
        produce_avro(&broker.bootstrap, &registry, "orders", schema, records)
    };
    let records = |from: u64, extra: &str| -> Vec<String> {
        (from..from + 5)
            .map(|id| format!(r#"{{"id":{id},"note":"n{id}"{extra}}}"#))
            .collect()
    };
    let (code, err) = produce(&v1, &records(0, ""))?;
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = produce(&v2, &records(5, r#","coupon":"C""#))?;
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = produce(&bad, &[r#"{"id":"x","note":"n"}"#.to_string()])?;
    assert_eq!(code, Some(4), "refused as incompatible: {err}");

    assert_eq!(
        registry.get("/subjects")?,
        serde_json::json!(["orders-value"])
    );
    assert_eq!(
        registry.get("/subjects/orders-value/versions")?,
        serde_json::json!([1, 2])
    );
    let latest = registry.get("/subjects/orders-value/versions/latest")?;
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(2))
    );
    let by_id = registry.get("/schemas/ids/2")?;
    assert!(
        by_id["schema"]
            .as_str()
            .is_some_and(|s| s.contains("coupon")),
        "{by_id}"
    );

    // The wire format: magic byte 0, then the schema id, big-endian.
    let consumed = broker.consume_all("orders", 11, Duration::from_secs(20))?;
    assert_eq!(
        consumed.len(),
        10,
        "nothing produced with the refused schema"
    );
    for (i, r) in consumed.iter().enumerate() {
        let payload = r.payload.as_deref().unwrap_or_default();
        let want_id: u32 = if i < 5 { 1 } else { 2 };
        assert_eq!(payload[0], 0, "magic byte of record {i}");
        assert_eq!(
            u32::from_be_bytes(payload[1..5].try_into()?),
            want_id,
            "record {i}"
        );
    }
    Ok(())
}
