//! ztunnel: the node tunnel of the mesh.
//!
//! Modules by concern: [`config`] (the one typed config), [`app`] (wiring), [`inpod`] (pods
//! handed over by the CNI agent), [`netns`] (sockets inside pod network namespaces),
//! [`proxy`] (the per-pod listeners: outbound 15001, inbound 15006, HBONE 15008),
//! [`telemetry`] (metrics and access logs), [`admin`] (15000/15020/15021).

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod inpod;
pub mod netns;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
