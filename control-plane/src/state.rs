//! What the gRPC services and lease sessions share, below them: the catalog,
//! the authenticator, run admission, lease timing, the shutdown signal and
//! this replica's scheduler handle. The scheduler and the lease reaper are
//! handed only the parts they use, so they do not depend on this struct.

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::catalog::leases::LeaseSettings;
use crate::catalog::Catalog;
use crate::leasing::dispatch::Dispatcher;
use crate::runs::admission::RunAdmission;
use crate::runs::downloads::Downloads;
use crate::scheduler::{SchedulerHandle, SchedulerSettings};
use crate::secrets::Keyring;

/// What every handler needs.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The catalog.
    pub catalog: Catalog,
    /// Resolves callers.
    pub auth: Authenticator,
    /// Creates runs: the one way a run comes into being.
    pub runs: RunAdmission,
    /// Lease timing for worker sessions and the reaper.
    pub lease_settings: LeaseSettings,
    /// Fires when the server starts shutting down, so long-lived streams
    /// (lease sessions) end instead of holding the graceful shutdown open.
    pub stopping: CancellationToken,
    /// This replica's job scheduler: settings, lease identity and status.
    pub scheduler: SchedulerHandle,
    /// The keys secrets are sealed with (none: secrets are disabled).
    pub secrets: Keyring,
    /// This replica's assignment coordinator, which the lease sessions sit at.
    pub dispatch: Dispatcher,
    /// Downloads whose callers wait on this replica.
    pub downloads: Downloads,
}

impl AppState {
    /// State over a catalog and an authenticator.
    pub fn new(catalog: Catalog, auth: Authenticator) -> Self {
        AppState {
            runs: RunAdmission::new(catalog.clone(), Keyring::disabled()),
            catalog,
            auth,
            lease_settings: LeaseSettings::default(),
            stopping: CancellationToken::new(),
            scheduler: SchedulerHandle::new(SchedulerSettings::default()),
            secrets: Keyring::disabled(),
            dispatch: Dispatcher::default(),
            downloads: Downloads::default(),
        }
    }

    /// The same state with other scheduler settings.
    pub fn with_scheduler_settings(mut self, settings: SchedulerSettings) -> Self {
        self.scheduler = SchedulerHandle::new(settings);
        self
    }

    /// The same state with the given secrets keys.
    pub fn with_secrets(mut self, keyring: Keyring) -> Self {
        self.runs = RunAdmission::new(self.catalog.clone(), keyring.clone());
        self.secrets = keyring;
        self
    }

    /// The same state with other lease timing.
    pub fn with_lease_settings(mut self, settings: LeaseSettings) -> Self {
        self.lease_settings = settings;
        self
    }
}
