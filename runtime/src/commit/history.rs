//! Reading the table's history: the newest snapshot a pipeline committed, with the
//! checkpoint id and offsets its summary carries.

use iceberg::spec::TableMetadata;

use crate::checkpoint::CommittedState;

use super::TableError;

/// The newest snapshot in the current branch's history that was committed by `uid`.
pub fn last_pipeline_commit(
    metadata: &TableMetadata,
    uid: &str,
) -> Result<Option<CommittedState>, TableError> {
    let mut current = metadata.current_snapshot();
    while let Some(snapshot) = current {
        if let Some(state) = CommittedState::from_summary(
            snapshot.snapshot_id(),
            &snapshot.summary().additional_properties,
            uid,
        ) {
            return state.map(Some).map_err(TableError::History);
        }
        current = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    Ok(None)
}
