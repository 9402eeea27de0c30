//! Starting a run: recovery from the newest durable record, a savepoint or nothing (decided by
//! `checkpoint::decide_recovery`), the registration for remote workers, and in-process workers.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, mpsc},
    time::Instant,
};

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use tidewater_crds::job_api::RunState;

use futures::StreamExt;
use iceberg::Catalog;

use crate::{
    checkpoint::{
        CheckpointRecord, Recovery, TableStates, decide_recovery, max_checkpoint_id, record_tables,
        render_offsets,
        savepoint::{RestoreTarget, already_restored, check_restore},
        store::StateStore,
    },
    commit::{self, PipelineCatalog, TableError},
    config::PipelineConfig,
    control::{
        api::{Registration, Shared},
        hub::Event,
        protocol::{ToCoordinator, WorkerId},
        worker::{self, Tables, WorkerSetup},
    },
    maintenance::commit::Cas,
    offsets::Offsets,
    source,
    write::WriterFactory,
};

/// How many tables are loaded at the same time during recovery.
const LOAD_CONCURRENCY: usize = 8;

/// The newest commit of pipeline `uid` in each of `tables` (`None` for a table that is gone).
async fn table_states(
    catalog: &dyn Catalog,
    tables: impl IntoIterator<Item = String>,
    uid: &str,
) -> Result<TableStates, TableError> {
    futures::stream::iter(tables)
        .map(|table| async move {
            let ident = commit::parse_ident(&table)?;
            if !catalog.table_exists(&ident).await? {
                return Ok((table, None));
            }
            let loaded = catalog
                .load_table(&ident)
                .await
                .map_err(|source| TableError::Load {
                    table: table.clone(),
                    source: Box::new(source),
                })?;
            let last = commit::last_pipeline_commit(loaded.metadata(), uid)?;
            Ok((table, last))
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect::<Vec<Result<_, TableError>>>()
        .await
        .into_iter()
        .collect()
}

use super::{Coordinator, LIVENESS_INTERVAL, Member, Options, RunError, StartMode};

/// Where to begin, decided from the start mode, the durable records and the table.
struct Begin {
    start_offsets: Offsets,
    table_base_offsets: BTreeMap<String, Offsets>,
    next_checkpoint_id: u64,
    /// A record to finish, and the tables it must still be committed to.
    pending: Option<(CheckpointRecord, Vec<String>)>,
    origin: Option<String>,
}

impl Coordinator {
    /// Recovers, publishes the registration for remote workers and starts local ones.
    /// `events` is the receiving end of `shared.hub`. Traced as `recovery`.
    #[tracing::instrument(name = "recovery", skip_all, fields(pipeline = %config.name))]
    pub async fn start(
        config: PipelineConfig,
        options: Options,
        shared: Arc<Shared>,
        events: UnboundedReceiver<Event>,
    ) -> Result<Self, RunError> {
        let run_id = uuid::Uuid::now_v7().simple().to_string()[..12].to_string();
        let PipelineCatalog {
            catalog,
            storage_props,
        } = commit::open_pipeline_catalog(&config).await?;
        // The one table of a pipeline without a route exists before anything is read.
        let fixed = match &config.table {
            Some(key) => {
                match commit::open_table(catalog.as_ref(), &config, key, None, true, None).await {
                    Ok(table) => Some((key.clone(), table)),
                    Err(TableError::NeedsRecord(_)) => {
                        tracing::info!(table = %key, "the table will be created from its first record");
                        None
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => None,
        };
        // Upsert checkpoints commit row deltas through the catalog's compare-and-swap.
        let swap = match config.resource.spec.sink.mode {
            tidewater_crds::pipeline::WriteMode::Upsert => Some(Arc::new(
                Cas::connect(&config.catalog)
                    .await
                    .map_err(|e| TableError::Swap(e.to_string()))?,
            )),
            tidewater_crds::pipeline::WriteMode::Append => None,
        };
        let store = StateStore::open(&config.state_location, &storage_props)?;
        let records = store.load_all(&config.uid).await?;
        let mut states = table_states(
            catalog.as_ref(),
            records
                .iter()
                .flat_map(record_tables)
                .filter(|t| fixed.as_ref().is_none_or(|(key, _)| *t != key))
                .cloned()
                .collect::<BTreeSet<_>>(),
            &config.uid,
        )
        .await?;
        let mut prepared = Vec::new();
        if let Some((key, table)) = &fixed {
            states.insert(
                key.clone(),
                commit::last_pipeline_commit(table.metadata(), &config.uid)?,
            );
            // An append does not change what writers need (schema, spec, properties,
            // location), so the table loaded before a recovered commit serves.
            let factory = WriterFactory::new(table, &config.resource.spec.sink.write_properties)?;
            prepared.push((key.clone(), factory));
        }
        let begin = Self::decide_begin(
            &config,
            &options,
            &store,
            catalog.as_ref(),
            &records,
            states,
        )
        .await?;
        tracing::info!(
            run = %run_id,
            resume = %render_offsets(&begin.start_offsets),
            next_checkpoint = begin.next_checkpoint_id,
            records = records.len(),
            tables = begin.table_base_offsets.len(),
            origin = begin.origin.as_deref().unwrap_or("-"),
            "recovered"
        );
        let admin = Arc::new(source::consumer(&config)?);
        let hub = shared.hub.clone();
        let metrics = shared.metrics.clone();
        let target = config.parallelism;
        let mut coordinator = Self {
            options,
            shared,
            hub,
            events,
            catalog,
            swap,
            rewrites: std::sync::Mutex::default(),
            store,
            metrics,
            run_id,
            admin,
            worker_tables: Tables::new(&config, prepared),
            members: BTreeMap::new(),
            target,
            partitions: BTreeSet::new(),
            owner: BTreeMap::new(),
            offsets: begin.start_offsets,
            table_base: begin.table_base_offsets,
            next_checkpoint_id: begin.next_checkpoint_id,
            origin: begin.origin,
            rebalance: false,
            savepoints: VecDeque::new(),
            last_checkpoint: None,
            lag: BTreeMap::new(),
            source_answered: Instant::now(),
            rows_committed: 0,
            aborted: 0,
            discovered: false,
            config,
        };
        if let Some((record, tables)) = &begin.pending {
            let snapshots = coordinator.commit_tables(record, tables).await?;
            tracing::info!(
                checkpoint = record.checkpoint_id,
                ?snapshots,
                "finished commit of recovered checkpoint"
            );
        }
        if coordinator.options.local_workers {
            for _ in 0..target {
                coordinator.spawn_local()?;
            }
        }
        coordinator.discover().await?;
        *coordinator
            .shared
            .registration
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Registration {
            run_id: coordinator.run_id.clone(),
            pipeline_yaml: coordinator.options.pipeline_yaml.clone(),
            base_dir: coordinator.options.base_dir.display().to_string(),
            heartbeat_timeout: coordinator.options.heartbeat_timeout,
        });
        coordinator.publish(RunState::Running);
        coordinator.metrics.set_ready(true);
        coordinator.spawn_liveness();
        Ok(coordinator)
    }

    async fn decide_begin(
        config: &PipelineConfig,
        options: &Options,
        store: &StateStore,
        catalog: &dyn Catalog,
        records: &[CheckpointRecord],
        mut states: TableStates,
    ) -> Result<Begin, RunError> {
        let latest = |records: &[CheckpointRecord], states: &TableStates| {
            let recovery = decide_recovery(records, states).map_err(RunError::Recovery)?;
            for (id, reason) in &recovery.skipped {
                tracing::warn!(checkpoint = id, %reason, "skipping checkpoint record a table contradicts");
            }
            let Recovery {
                start_offsets,
                table_base_offsets,
                next_checkpoint_id,
                pending,
                pending_tables,
                origin,
                ..
            } = recovery;
            Ok::<_, RunError>(Begin {
                start_offsets,
                table_base_offsets,
                next_checkpoint_id,
                pending: pending.map(|p| (p, pending_tables)),
                origin,
            })
        };
        let committed = |states: &TableStates| -> BTreeMap<String, Offsets> {
            states
                .iter()
                .filter_map(|(t, l)| Some((t.clone(), l.as_ref()?.offsets.clone())))
                .collect()
        };
        match &options.start {
            StartMode::Latest => latest(records, &states),
            StartMode::Fresh => {
                tracing::info!(
                    "fresh start: checkpoints ignored, partitions start from spec.source.kafka.startingOffsets"
                );
                Ok(Begin {
                    start_offsets: Offsets::new(),
                    table_base_offsets: committed(&states),
                    next_checkpoint_id: max_checkpoint_id(records, &states) + 1,
                    pending: None,
                    origin: None,
                })
            }
            StartMode::Savepoint(path) => {
                let savepoint = store.read_savepoint(path).await?;
                if already_restored(records, &savepoint.id) {
                    tracing::info!(savepoint = %savepoint.id, "savepoint already restored by an earlier run of this deployment: continuing from the newest checkpoint");
                    return latest(records, &states);
                }
                let unseen: BTreeSet<String> = savepoint
                    .tables()
                    .filter(|t| !states.contains_key(*t))
                    .cloned()
                    .collect();
                states.extend(table_states(catalog, unseen, &config.uid).await?);
                // With a pattern, the topics read are those of the savepoint that still match.
                let topics: Vec<String> = config
                    .topics
                    .iter()
                    .cloned()
                    .chain(
                        savepoint
                            .checkpoint
                            .offsets
                            .keys()
                            .filter(|t| config.reads(t))
                            .cloned(),
                    )
                    .collect();
                let sink = config.sink_display();
                let target = RestoreTarget {
                    uid: &config.uid,
                    table: &sink,
                    topics: &topics,
                    allow_non_restored_state: options.allow_non_restored_state,
                };
                let restored =
                    check_restore(&savepoint, target, &states).map_err(RunError::Restore)?;
                if !restored.dropped_topics.is_empty() {
                    tracing::warn!(topics = ?restored.dropped_topics, "savepoint state of topics no longer read is dropped");
                }
                tracing::info!(savepoint = %savepoint.id, checkpoint = savepoint.checkpoint.checkpoint_id, "restoring savepoint");
                Ok(Begin {
                    start_offsets: restored.start_offsets,
                    table_base_offsets: restored.table_base_offsets,
                    next_checkpoint_id: max_checkpoint_id(records, &states)
                        .max(savepoint.checkpoint.checkpoint_id)
                        + 1,
                    pending: None,
                    origin: Some(savepoint.id),
                })
            }
        }
    }

    /// Declares remote workers that stopped polling lost.
    pub(super) fn spawn_liveness(&self) {
        let hub = self.hub.clone();
        let timeout = self.options.heartbeat_timeout;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIVENESS_INTERVAL).await;
                for id in hub.silent_for(timeout) {
                    hub.remove(id);
                    hub.emit(Event::Lost {
                        id,
                        reason: format!("no contact for more than {timeout:?}"),
                    });
                }
            }
        });
    }

    pub(super) fn spawn_local(&mut self) -> Result<WorkerId, RunError> {
        let (tx, rx) = mpsc::channel();
        let id = self.hub.add_local(tx);
        let (events_tx, mut events_rx) = unbounded_channel::<ToCoordinator>();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Some(m) = events_rx.recv().await {
                hub.emit(Event::Worker(m));
            }
        });
        let thread = worker::spawn(WorkerSetup {
            id,
            config: self.config.clone(),
            tables: self.worker_tables.clone(),
            run_id: self.run_id.clone(),
            metrics: self.metrics.clone(),
            commands: rx,
            events: events_tx,
        })
        .map_err(RunError::SpawnWorker)?;
        self.members.insert(
            id,
            Member {
                name: format!("local-{id}"),
                metrics_addr: None,
                leaving: false,
                thread: Some(thread),
            },
        );
        Ok(id)
    }
}
