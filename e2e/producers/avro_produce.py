"""Produces Avro records the way Confluent clients do — confluent-kafka's AvroSerializer with its
SchemaRegistryClient (an independent implementation of the wire format and the registry
protocol) — for Tidewater's tests.

Records are JSON objects given one per line on stdin, serialized with --schema (a file) under
the topic's subject (TopicNameStrategy: `<topic>-value`), or --subject-strategy record /
topic-record. Values of decimal fields may be given as strings. Exit 4 when the registry refuses the schema as incompatible.
"""
import argparse
import decimal
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def decimal_fields(schema):
    """Top-level fields of decimal logical type (given as strings in the JSON input)."""
    out = []
    for f in schema.get("fields", []):
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") == "decimal" for t in types):
            out.append(f["name"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--schema", required=True, help="file with the Avro schema (JSON)")
    ap.add_argument("--partition", type=int, default=0)
    ap.add_argument("--subject-strategy", default="topic", choices=["topic", "record", "topic-record"])
    ap.add_argument("--registry-auth", help="USER:PASSWORD for the registry (HTTP basic)")
    args = ap.parse_args()
    registry_conf = {"url": args.registry}
    if args.registry_auth:
        registry_conf["basic.auth.user.info"] = args.registry_auth
    registry = SchemaRegistryClient(registry_conf)
    conf = {"auto.register.schemas": True}
    if args.subject_strategy == "record":
        conf["subject.name.strategy"] = record_subject_name_strategy
    elif args.subject_strategy == "topic-record":
        conf["subject.name.strategy"] = topic_record_subject_name_strategy
    with open(args.schema) as f:
        text = f.read()
    serializer = AvroSerializer(registry, text, conf=conf)
    decimals = decimal_fields(json.loads(text))
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    sent = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            for name in decimals:
                if isinstance(record.get(name), (str, int, float)):
                    record[name] = decimal.Decimal(str(record[name]))
            value = serializer(record, ctx)
        except SchemaRegistryError as e:
            print(f"registry refused the schema: {e}", file=sys.stderr)
            sys.exit(4 if e.http_status_code == 409 else 1)
        producer.produce(args.topic, value=value, partition=args.partition)
        sent += 1
    remaining = producer.flush(30)
    if remaining:
        sys.exit(f"{remaining} records not delivered")
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    main()
