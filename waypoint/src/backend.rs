//! Where a rule sends a request: a backend service and its share. Its own module because both
//! the routes and the filters (a mirror names a backend) use it.

/// A backend of a rule: a service, reached on `port` (the request's port when `None`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Service key `<namespace>/<hostname>`.
    pub service: String,
    /// Service port; `None` keeps the port the client addressed.
    pub port: Option<u16>,
    /// Relative weight; 0 never chosen.
    pub weight: u32,
}
