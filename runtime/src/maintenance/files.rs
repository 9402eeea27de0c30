//! Reading a table's file tree: manifest lists, manifests, live data files with the snapshot
//! that added them, and every file a snapshot references. I/O through the table's FileIO.

use std::collections::{BTreeSet, HashMap, HashSet};

use iceberg::{
    io::FileIO,
    spec::{
        DataContentType, DataFile, Literal, ManifestFile, ManifestList, ManifestStatus,
        PrimitiveLiteral, Snapshot, Struct, TableMetadata,
    },
};

use super::plan::SortValue;

/// One manifest entry that is still live.
#[derive(Debug, Clone)]
pub struct LiveEntry {
    /// The file.
    pub data_file: DataFile,
    /// Snapshot that added it.
    pub snapshot_id: i64,
    /// Data sequence number.
    pub sequence_number: i64,
    /// File sequence number.
    pub file_sequence_number: Option<i64>,
    /// Spec of the manifest it is in.
    pub spec_id: i32,
    /// The manifest it is in.
    pub manifest_path: String,
}

/// A snapshot's manifest list.
pub async fn manifest_list(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot: &Snapshot,
) -> iceberg::Result<ManifestList> {
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    ManifestList::parse_with_version(&bytes, metadata.format_version())
}

/// Live entries of the data manifests of `manifests` (delete manifests are skipped).
pub async fn live_data_entries(
    file_io: &FileIO,
    manifests: &[ManifestFile],
) -> iceberg::Result<Vec<LiveEntry>> {
    let mut out = Vec::new();
    for m in manifests
        .iter()
        .filter(|m| m.content == iceberg::spec::ManifestContentType::Data)
    {
        let manifest = m.load_manifest(file_io).await?;
        for e in manifest.entries() {
            if e.status() == ManifestStatus::Deleted || e.content_type() != DataContentType::Data {
                continue;
            }
            out.push(LiveEntry {
                data_file: e.data_file().clone(),
                snapshot_id: e.snapshot_id().unwrap_or(m.added_snapshot_id),
                sequence_number: e.sequence_number().unwrap_or(m.sequence_number),
                file_sequence_number: e.file_sequence_number,
                spec_id: m.partition_spec_id,
                manifest_path: m.manifest_path.clone(),
            });
        }
    }
    Ok(out)
}

/// Partitions that received a live delete file with a data sequence number above `after`.
pub async fn partitions_with_deletes_after(
    file_io: &FileIO,
    manifests: &[ManifestFile],
    after: i64,
) -> iceberg::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for m in manifests
        .iter()
        .filter(|m| m.content == iceberg::spec::ManifestContentType::Deletes)
        .filter(|m| m.sequence_number > after)
    {
        let manifest = m.load_manifest(file_io).await?;
        for e in manifest.entries() {
            if e.status() != ManifestStatus::Deleted
                && e.sequence_number().unwrap_or(m.sequence_number) > after
            {
                out.insert(partition_key(e.data_file().partition()));
            }
        }
    }
    Ok(out)
}

/// Every file `snapshot` needs: its manifest list, manifests, the files they name, and an
/// upsert compaction's position map
/// (in any status: a deleted entry's file may still be read by time travel to its parent,
/// which is handled by that parent being retained or not).
pub async fn referenced(
    file_io: &FileIO,
    metadata: &TableMetadata,
    snapshot: &Snapshot,
    seen_manifests: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
) -> iceberg::Result<()> {
    out.insert(snapshot.manifest_list().to_string());
    // An upsert table's compaction names where rows went: pipelines still read it.
    if let Some(map) = snapshot
        .summary()
        .additional_properties
        .get(crate::upsert::position_map::SUMMARY_POSITION_MAP)
    {
        out.insert(map.clone());
    }
    let list = manifest_list(file_io, metadata, snapshot).await?;
    for m in list.entries() {
        out.insert(m.manifest_path.clone());
        if !seen_manifests.insert(m.manifest_path.clone()) {
            continue;
        }
        let manifest = m.load_manifest(file_io).await?;
        for e in manifest.entries() {
            out.insert(e.file_path().to_string());
        }
    }
    Ok(())
}

/// A stable identity for a partition tuple.
pub fn partition_key(partition: &Struct) -> String {
    let values: Vec<String> = partition
        .iter()
        .map(|v| match v {
            None => "null".to_string(),
            Some(l) => format!("{l:?}"),
        })
        .collect();
    values.join("/")
}

/// Orderable partition values ("newest" partitions are the largest).
pub fn partition_sort(partition: &Struct) -> Vec<SortValue> {
    partition
        .iter()
        .map(|v| match v {
            None => SortValue::Null,
            Some(Literal::Primitive(p)) => match p {
                PrimitiveLiteral::Int(i) => SortValue::Int(i128::from(*i)),
                PrimitiveLiteral::Long(i) => SortValue::Int(i128::from(*i)),
                PrimitiveLiteral::Int128(i) => SortValue::Int(*i),
                PrimitiveLiteral::Boolean(b) => SortValue::Int(i128::from(*b)),
                PrimitiveLiteral::String(s) => SortValue::Text(s.clone()),
                other => SortValue::Text(format!("{other:?}")),
            },
            Some(other) => SortValue::Text(format!("{other:?}")),
        })
        .collect()
}

/// Commit time of each snapshot still in the metadata.
pub fn snapshot_times(metadata: &TableMetadata) -> HashMap<i64, i64> {
    metadata
        .snapshots()
        .map(|s| (s.snapshot_id(), s.timestamp_ms()))
        .collect()
}
