//! Snapshots as the domain sees them: the decision of what a new snapshot
//! writes ([`plan`]). The catalog stores the decision (`catalog::snapshots`).

pub mod plan;
