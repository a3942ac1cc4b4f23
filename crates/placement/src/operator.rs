//! The next step that takes a region's replicas toward its target, one replica change at a
//! time, never below the target's size: add a learner, let it catch up and promote it, then
//! remove a replica that is not wanted (after moving the leadership off it).

use crate::model::{Config, RegionLayout};
use serde::{Deserialize, Serialize};

/// One step a region's leader takes for placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// Add a replica on the store, as a learner.
    AddLearner { store: u64 },
    /// Make the store's learner a voter (the store refuses until it has caught up).
    Promote { store: u64 },
    /// Remove the store's replica.
    Remove { store: u64 },
    /// Hand the leadership to the store's replica (the leader's own replica must go).
    TransferLeader { store: u64 },
}

/// What `region`'s leader (on `leader`) should do next, or `None` when its replicas are
/// where they should be (or it has no target).
pub fn next_step(region: &RegionLayout, leader: u64) -> Option<Operator> {
    let target = region.target.as_ref()?;
    let wanted = |s: u64| target.contains(&s);
    // A learner that is wanted is promoted first: it is the replica an addition made.
    if let Some(l) = region
        .replicas
        .iter()
        .find(|p| p.learner && wanted(p.store))
    {
        return Some(Operator::Promote { store: l.store });
    }
    if let Some(&s) = target
        .iter()
        .find(|s| !region.replicas.iter().any(|p| p.store == **s))
    {
        return Some(Operator::AddLearner { store: s });
    }
    if let Some(l) = region
        .replicas
        .iter()
        .find(|p| p.learner && !wanted(p.store))
    {
        return Some(Operator::Remove { store: l.store });
    }
    let extra = region.replicas.iter().find(|p| !wanted(p.store))?;
    if extra.store != leader {
        return Some(Operator::Remove { store: extra.store });
    }
    // The leader's replica must go: hand the leadership to a wanted voter first.
    region
        .replicas
        .iter()
        .find(|p| !p.learner && wanted(p.store))
        .map(|p| Operator::TransferLeader { store: p.store })
}

/// What placement does with a region leader's heartbeat report of its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportPlan {
    /// The report differs from the layout held (epoch or replicas): record it
    /// (`Command::ReportRegion`) before anything is asked of the region.
    pub record: bool,
    /// The next step toward the region's target, decided for the reported epoch.
    pub operator: Option<Operator>,
}

/// Placement's answer to `reported`, the region as its leader (on store `leader`) sees it,
/// against `config`: `None` when the report is older than what placement holds (ignored,
/// no operator: the leader is stale, and its successor will report). The server's
/// heartbeat handler and the simulator both decide with this.
pub fn plan_report(config: &Config, reported: &RegionLayout, leader: u64) -> Option<ReportPlan> {
    let held = config.regions.get(&reported.id);
    if let Some(h) = held {
        if reported.version < h.version || reported.conf_version < h.conf_version {
            return None;
        }
    }
    let record = held.map_or(true, |h| {
        h.epoch() != reported.epoch() || h.replicas != reported.replicas
    });
    let mut layout = reported.clone();
    layout.target = held.and_then(|h| h.target.clone());
    Some(ReportPlan {
        record,
        operator: next_step(&layout, leader),
    })
}
