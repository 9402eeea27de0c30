//! Avro ingestion end to end, running `examples/avro-shop.yaml`: records serialized by
//! confluent-kafka's AvroSerializer against the project's schema registry (HTTP basic auth),
//! one table per topic created from the registry's schema — logical types, a nested record, an
//! array and a map included — a new schema version (a widened int, a new field, a new nested
//! field) evolving the table without a restart, a topic created while running whose table
//! takes its subject's newest version, and records that are not Avro or name an unknown
//! schema dead-lettered with the reason. PyIceberg and DuckDB read every table.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tidewater_e2e::{
    Broker, CatalogTable, SchemaRegistry, Tidewater, inspect_catalog_rows, produce_avro, repo_root,
    wait_for_total_rows,
};

const ORDER_V1: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
        {"name": "name", "type": "string"},
        {"name": "city", "type": ["null", "string"], "default": null}]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "qty", "type": "int"}
]}"#;

/// v2: `qty` widened to long, a new `coupon`, a new nested `customer.tier`.
const ORDER_V2: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
        {"name": "name", "type": "string"},
        {"name": "city", "type": ["null", "string"], "default": null},
        {"name": "tier", "type": ["null", "string"], "default": null}]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "qty", "type": "long"},
    {"name": "coupon", "type": ["null", "string"], "default": null}
]}"#;

const PAYMENT: &str = r#"{"type": "record", "name": "Payment", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "amount", "type": "double"},
    {"name": "method", "type": "string"}
]}"#;

const RETURN_V1: &str = r#"{"type": "record", "name": "Return", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "reason", "type": "string"}
]}"#;

const RETURN_V2: &str = r#"{"type": "record", "name": "Return", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "reason", "type": "string"},
    {"name": "refund", "type": ["null", "double"], "default": null}
]}"#;

const TS0: i64 = 1_767_323_045_500; // 2026-01-02T03:04:05.5Z

fn order(id: u64, v2: bool) -> String {
    let mut o = json!({
        "id": id,
        "ts": TS0 + i64::try_from(id).unwrap_or(0) * 1000,
        "day": 20_454,
        "price": format!("{id}.25"),
        "uid": format!("00000000-0000-0000-0000-{id:012}"),
        "status": if id.is_multiple_of(2) { "NEW" } else { "PAID" },
        "customer": {"name": format!("c{id}"), "city": if id.is_multiple_of(3) { Value::Null } else { json!("Vienna") }},
        "tags": ["a", format!("b{id}")],
        "attrs": {"n": id},
        "qty": id % 7,
    });
    if v2 {
        o["customer"]["tier"] = json!("gold");
        o["coupon"] = if id.is_multiple_of(2) {
            json!("SAVE")
        } else {
            Value::Null
        };
        o["qty"] = json!(5_000_000_000u64 + id);
    }
    o.to_string()
}

fn table<'a>(
    all: &'a std::collections::BTreeMap<String, CatalogTable>,
    name: &str,
) -> &'a CatalogTable {
    all.get(name)
        .unwrap_or_else(|| panic!("{name} missing: {:?}", all.keys()))
}

#[test]
fn avro_topics_land_in_tables_made_and_evolved_from_the_registry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::start()?;
    let registry = SchemaRegistry::start_with_auth(dir.path(), Some("tidewater:s3cret"))?;
    broker.create_topic("shop.orders", 1)?;
    broker.create_topic("shop.payments", 1)?;
    let schema_file = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let produce = |topic: &str, schema: &std::path::Path, records: Vec<String>| -> Result<()> {
        let (code, err) = produce_avro(&broker.bootstrap, &registry, topic, schema, &records)?;
        anyhow::ensure!(code == Some(0), "producing to {topic}: {err}");
        Ok(())
    };
    let v1 = schema_file("order-v1.avsc", ORDER_V1)?;
    produce(
        "shop.orders",
        &v1,
        (0..60).map(|i| order(i, false)).collect(),
    )?;
    let payments = schema_file("payment.avsc", PAYMENT)?;
    produce(
        "shop.payments",
        &payments,
        (0..30)
            .map(|i| {
                json!({"id": i, "ts": TS0 * 1000 + i, "amount": 1.5, "method": "card"}).to_string()
            })
            .collect(),
    )?;

    std::fs::write(dir.path().join("registry-password"), "s3cret\n")?;
    let local = format!("{}/", dir.path().display());
    let yaml = std::fs::read_to_string(repo_root().join("examples/avro-shop.yaml"))?
        .replace("127.0.0.1:9092", &broker.bootstrap)
        .replace("http://127.0.0.1:8081", &registry.url())
        .replace(".tidewater/", &local)
        .replace("interval: 2s", "interval: 1s");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml)?;
    let uri = format!("sqlite://{local}shop-catalog.db");
    let warehouse = dir.path().join("warehouse");
    let mut tw = Tidewater::start(&file, &dir.path().join("tw.log"), None)?;
    wait_for_total_rows(&uri, &warehouse, 90, Duration::from_secs(120))
        .map_err(|e| e.context(tw.log_text()))?;

    // A new version while running: the table evolves, nothing restarts.
    let v2 = schema_file("order-v2.avsc", ORDER_V2)?;
    produce(
        "shop.orders",
        &v2,
        (60..100).map(|i| order(i, true)).collect(),
    )?;
    // Not Avro, and an id the registry never issued: dead-lettered with the reason.
    let producer = broker.producer()?;
    producer.send("shop.orders", 0, b"{\"id\": 1}")?;
    producer.send("shop.orders", 0, &[0, 0, 0, 3, 231, 2])?;
    producer.flush()?;
    // A topic created while running, whose subject already has a newer version than the
    // records' own: the table is created from the newest.
    registry.register("shop.returns-value", RETURN_V1)?;
    registry.register("shop.returns-value", RETURN_V2)?;
    broker.create_topic("shop.returns", 1)?;
    let returns = schema_file("return-v1.avsc", RETURN_V1)?;
    produce(
        "shop.returns",
        &returns,
        (0..20)
            .map(|i| json!({"id": i, "ts": TS0, "reason": "damaged"}).to_string())
            .collect(),
    )?;
    wait_for_total_rows(&uri, &warehouse, 150, Duration::from_secs(120))
        .map_err(|e| e.context(tw.log_text()))?;
    // Dead letters are counted per table and reason (published at a checkpoint).
    for reason in ["invalid-avro", "unknown-schema"] {
        let name = format!(
            "tidewater_table_dead_lettered_records_total{{table=\"lake.shop_orders\",reason=\"{reason}\"}}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tw.metric(&name).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(tw.metric(&name), Some(1.0), "{name}");
    }
    assert!(
        tw.stop(Duration::from_secs(60))?.success(),
        "{}",
        tw.log_text()
    );
    let log = tw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("schema evolved") && l.contains("lake.shop_orders")),
        "{log}"
    );

    let all = inspect_catalog_rows(&uri, &warehouse, 200)?;
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        [
            "lake.shop_orders",
            "lake.shop_payments",
            "lake.shop_returns"
        ]
    );
    for (name, rows) in [
        ("lake.shop_orders", 100),
        ("lake.shop_payments", 30),
        ("lake.shop_returns", 20),
    ] {
        let t = table(&all, name);
        assert_eq!(
            (t.pyiceberg_rows, t.pyiceberg_distinct, t.duckdb),
            (rows, rows, Some((rows, rows))),
            "{name}"
        );
    }

    let orders = table(&all, "lake.shop_orders");
    assert_eq!(orders.format_version, 2);
    assert_eq!(
        orders.sort_order,
        ["ts identity desc nulls-last"],
        "createTable.sortBy"
    );
    let types: Vec<(&str, &str)> = orders
        .columns
        .iter()
        .map(|c| {
            let t = orders.types[c].as_str();
            (
                c.as_str(),
                if t.starts_with("struct<") {
                    "struct"
                } else {
                    t
                },
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("id", "long"),
            ("ts", "timestamptz"),
            ("day", "date"),
            ("price", "decimal(10, 2)"),
            ("uid", "uuid"),
            ("status", "string"),
            ("customer", "struct"),
            ("tags", "list<string>"),
            ("attrs", "map<string, long>"),
            ("qty", "long"),
            ("coupon", "string"),
        ],
        "v1's columns with their Avro types, then v2's changes"
    );
    let customer = &orders.types["customer"];
    for field in [
        "name: required string",
        "city: optional string",
        "tier: optional string",
    ] {
        assert!(customer.contains(field), "{customer}");
    }
    assert!(orders.required.contains(&"customer".to_string()));
    for (reader, nonnull) in [
        ("pyiceberg", &orders.nonnull),
        ("duckdb", &orders.duckdb_nonnull),
    ] {
        assert_eq!(
            nonnull["coupon"], 20,
            "{reader}: even v2 orders have a coupon"
        );
        assert_eq!(nonnull["qty"], 100, "{reader}");
    }
    // Row by row, both readers see the same values, nested ones included.
    assert_eq!(orders.pyiceberg_first.len(), 100);
    assert_eq!(
        orders.pyiceberg_first, orders.duckdb_first,
        "PyIceberg and DuckDB agree"
    );
    let first = &orders.pyiceberg_first[0];
    assert_eq!(first["ts"], "2026-01-02T03:04:05.500000");
    assert_eq!(first["day"], "2026-01-01");
    assert_eq!(first["price"], "0.25");
    assert_eq!(first["uid"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(
        first["customer"],
        json!({"city": null, "name": "c0", "tier": null})
    );
    assert_eq!(first["tags"], json!(["a", "b0"]));
    assert_eq!(first["attrs"], json!({"n": 0}));
    let later = &orders.pyiceberg_first[61];
    assert_eq!(
        (later["qty"].clone(), later["coupon"].clone()),
        (json!(5_000_000_061u64), Value::Null)
    );
    assert_eq!(
        later["customer"],
        json!({"city": "Vienna", "name": "c61", "tier": "gold"})
    );

    let payments = table(&all, "lake.shop_payments");
    assert_eq!(
        payments.pyiceberg_first[3]["ts"],
        "2026-01-02T03:04:05.500003"
    );
    let returns = table(&all, "lake.shop_returns");
    assert_eq!(
        returns.columns,
        ["id", "ts", "reason", "refund"],
        "created from the subject's newest version"
    );
    assert_eq!(returns.nonnull["refund"], 0);

    // The dead-letter topic has several partitions: order by the source offset.
    let mut dead = broker.consume_all("dlq.shop", 2, Duration::from_secs(20))?;
    dead.sort_by_key(|d| {
        d.headers
            .get("tidewater.source.offset")
            .and_then(|o| o.parse::<u64>().ok())
    });
    let kinds: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.headers.get("tidewater.error.kind").map(String::as_str))
        .collect();
    assert_eq!(kinds, ["invalid-avro", "unknown-schema"], "{dead:?}");
    assert!(
        dead[1]
            .headers
            .get("tidewater.error")
            .is_some_and(|r| r.contains("schema id 999")),
        "{dead:?}"
    );
    Ok(())
}
