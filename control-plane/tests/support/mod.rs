//! Test harness: re-exports the library's test support and adds the
//! `both_backends!` macro and error-detail helpers.

#![allow(dead_code, unused_imports)]

pub use coffer_control_plane::testing::{authed, fresh_catalog, Backend, CatalogGuard, TestServer};

/// Generates one `#[tokio::test]` per backend for each named async test function
/// taking a `Backend`: `both_backends!(creates_a_bucket);` gives
/// `creates_a_bucket_postgres` and `creates_a_bucket_sqlite`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            pub mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            }
        )*
    };
}

/// The field paths of a status's `google.rpc.BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
