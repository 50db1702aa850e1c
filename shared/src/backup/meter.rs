//! The cost figures of one run: requests by kind and bytes, counted from the clients'
//! counters before and after (a backup run, a worker's batch, a fan-out).

use std::sync::atomic::Ordering;

use crate::copy::CopyEngine;
use crate::cost::{Prices, RunCost};
use crate::metering::RequestCounts;
use crate::source::Source;
use crate::store::Store;

/// Counters read at the start of a run.
#[derive(Debug, Clone)]
pub struct Meter {
    store: RequestCounts,
    ecr: RequestCounts,
    registry: u64,
    bytes_new: u64,
    bytes_deduplicated: u64,
}

fn ecr_requests(source: &Source) -> RequestCounts {
    source.ecr().map(|e| e.requests()).unwrap_or_default()
}

fn bytes(engine: Option<&CopyEngine>) -> (u64, u64) {
    engine.map_or((0, 0), |e| {
        let stats = e.stats();
        (
            stats.bytes_copied.load(Ordering::Relaxed),
            stats.bytes_skipped.load(Ordering::Relaxed),
        )
    })
}

impl Meter {
    /// Counters at zero: [`Meter::finish`] then says what the clients did since they were
    /// made (a command's whole cost, its first contacts included).
    pub fn zero() -> Meter {
        Meter {
            store: RequestCounts::default(),
            ecr: RequestCounts::default(),
            registry: 0,
            bytes_new: 0,
            bytes_deduplicated: 0,
        }
    }

    /// Reads the counters of `source`, `store` and (when the run copies) `engine`.
    pub fn start(source: &Source, store: &Store, engine: Option<&CopyEngine>) -> Meter {
        let (bytes_new, bytes_deduplicated) = bytes(engine);
        Meter {
            store: store.backend().requests(),
            ecr: ecr_requests(source),
            registry: source.registry().stats().requests.load(Ordering::Relaxed),
            bytes_new,
            bytes_deduplicated,
        }
    }

    /// What happened since [`Meter::start`], priced at `prices` (no storage estimate).
    pub fn finish(
        &self,
        source: &Source,
        store: &Store,
        engine: Option<&CopyEngine>,
        prices: &Prices,
    ) -> RunCost {
        let (bytes_new, bytes_deduplicated) = bytes(engine);
        RunCost::new(
            &store.backend().requests().since(&self.store),
            &ecr_requests(source).since(&self.ecr),
            source
                .registry()
                .stats()
                .requests
                .load(Ordering::Relaxed)
                .saturating_sub(self.registry),
            bytes_new.saturating_sub(self.bytes_new),
            bytes_deduplicated.saturating_sub(self.bytes_deduplicated),
            prices,
        )
    }
}
