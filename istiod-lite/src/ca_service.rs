//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: who may obtain which certificate.
//!
//! For each request, in order:
//! 1. authenticate the bearer token → the caller's node, else `Unauthenticated`;
//! 2. verify the CSR (one URI SAN naming an identity, EC P-256, good signature, ≤ 16 KiB),
//!    else `InvalidArgument`;
//! 3. if the metadata carries `ImpersonatedIdentity`, it must be a string naming the same
//!    identity as the CSR, else `InvalidArgument`;
//! 4. the identity must be in our trust domain, else `PermissionDenied`;
//! 5. the node must be allowed to hold it: a pod with that identity is scheduled on the node,
//!    else `PermissionDenied`. Nothing else: a node's token never obtains an identity of its
//!    own (no component of the mesh presents one, and one shared by every node would let any
//!    node pass for any other), so `ns/istio-system/sa/ztunnel` is refused like any identity
//!    without a pod on the node;
//! 6. sign for min(requested lifetime, maximum).
//!
//! Every decision writes one line on the tracing target `audit` with the fields `node`,
//! `identity`, `decision` (`allow`/`deny`), `reason` and `peer`.

use std::sync::Arc;
use std::time::Duration;

use mesh::ca::VerifiedCsr;

use crate::ca_reload::CurrentCa;
use mesh::ca_client::IMPERSONATED_IDENTITY_KEY;
use mesh::Identity;
use proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Code, Request, Response, Status};

use crate::auth::Authenticator;
use crate::ca_metrics::CaMetrics;
use crate::pods::PodDirectory;

/// Largest request accepted on the wire; a CSR is under 1 KiB and is capped at 16 KiB.
const MAX_REQUEST_LEN: usize = 64 * 1024;

/// The message of every authentication failure: callers learn nothing more.
pub const UNAUTHENTICATED_MESSAGE: &str = "missing or unknown bearer token";

/// The CA service: authentication, authorization, signing.
pub struct CaService {
    ca: CurrentCa,
    auth: Arc<Authenticator>,
    pods: Arc<dyn PodDirectory>,
    max_ttl: Duration,
    metrics: CaMetrics,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("trust_domain", &self.ca.load().trust_domain())
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

/// A signed certificate and what to write in the audit line.
struct Grant {
    node: String,
    identity: Identity,
    ttl: Duration,
    chain: Vec<String>,
    reason: &'static str,
}

/// A refusal: the gRPC status to send and what to write in the audit line.
struct Denial {
    code: Code,
    message: String,
    node: Option<String>,
    identity: Option<Identity>,
}

impl Denial {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Denial {
            code,
            message: message.into(),
            node: None,
            identity: None,
        }
    }
}

impl CaService {
    /// A service signing with `ca` (whose trust domain is ours), for callers in `tokens`,
    /// for identities `pods` places on their node, capping lifetimes at `max_ttl`, counting
    /// outcomes in `metrics`.
    pub fn new(
        ca: CurrentCa,
        auth: Arc<Authenticator>,
        pods: Arc<dyn PodDirectory>,
        max_ttl: Duration,
        metrics: CaMetrics,
    ) -> Self {
        CaService {
            ca,
            auth,
            pods,
            max_ttl,
            metrics,
        }
    }

    /// The tonic server for this service, with a request size limit.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_LEN)
    }

    async fn decide(
        &self,
        authorization: Option<&str>,
        request: IstioCertificateRequest,
    ) -> Result<Grant, Denial> {
        // (1) Who is asking.
        let authenticated = match authorization {
            Some(header) => self.auth.authenticate_header(header).await,
            None => Err("no authorization header".to_string()),
        };
        let caller = authenticated.map_err(|reason| {
            tracing::info!(target: "audit", %reason, "caller not authenticated");
            Denial::new(Code::Unauthenticated, UNAUTHENTICATED_MESSAGE)
        })?;
        let with_node = |mut d: Denial| {
            d.node = Some(caller.node.clone());
            d
        };

        // (2) What for.
        let csr = VerifiedCsr::from_pem(&request.csr)
            .map_err(|e| with_node(Denial::new(Code::InvalidArgument, e.to_string())))?;
        let identity = csr.identity().clone();
        let with_both = |d: Denial| {
            let mut d = with_node(d);
            d.identity = Some(identity.clone());
            d
        };

        // (3) Impersonation must name the same identity.
        let impersonated = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY_KEY));
        if let Some(value) = impersonated {
            let Some(prost_types::value::Kind::StringValue(text)) = &value.kind else {
                return Err(with_both(Denial::new(
                    Code::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY_KEY} must be a string"),
                )));
            };
            let wanted: Identity = text.parse().map_err(|e| {
                with_both(Denial::new(
                    Code::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY_KEY} is not a workload identity: {e}"),
                ))
            })?;
            if wanted != identity {
                return Err(with_both(Denial::new(
                    Code::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY_KEY} {wanted} does not match the identity in the CSR, {identity}"),
                )));
            }
        }

        // (4) Our trust domain only.
        let ca = self.ca.load();
        let ours = ca.trust_domain();
        if identity.trust_domain() != ours {
            return Err(with_both(Denial::new(
                Code::PermissionDenied,
                format!(
                    "identity {identity} is in trust domain {:?}; this CA signs only for {ours:?}",
                    identity.trust_domain()
                ),
            )));
        }

        // (5) A workload speaking for itself gets its own identity only.
        if let Some(own) = &caller.only {
            if *own != identity {
                return Err(with_both(Denial::new(
                    Code::PermissionDenied,
                    format!("a workload may obtain only its own identity ({own}), not {identity}"),
                )));
            }
        }

        // (6) The node may hold it.
        let Some(reason) = self.may_hold(&caller.node, &identity).await else {
            return Err(with_both(Denial::new(
                Code::PermissionDenied,
                format!(
                    "node {} may not hold identity {identity}: no pod with that identity is scheduled on {}",
                    caller.node, caller.node
                ),
            )));
        };

        // (7) Sign.
        let ttl = match u64::try_from(request.validity_duration) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.max_ttl),
            _ => self.max_ttl,
        };
        let chain = self.ca.load().sign(&csr, ttl).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            with_both(Denial::new(Code::Internal, "signing failed"))
        })?;
        Ok(Grant {
            node: caller.node,
            identity,
            ttl,
            chain,
            reason,
        })
    }

    /// Why `node` may hold `identity`, or `None` if it may not.
    async fn may_hold(&self, node: &str, identity: &Identity) -> Option<&'static str> {
        // The pod directory may stat and re-read files: keep that off the async threads.
        let pods = self.pods.clone();
        let (node, identity) = (node.to_string(), identity.clone());
        match tokio::task::spawn_blocking(move || pods.may_hold(&node, &identity)).await {
            Ok(true) => Some("a pod with that identity is scheduled on the node"),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(error = %e, "pod lookup failed; denying");
                None
            }
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        // A header that is not visible ASCII cannot carry a valid token.
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match self
            .decide(authorization.as_deref(), request.into_inner())
            .await
        {
            Ok(grant) => {
                self.metrics.signed();
                tracing::info!(
                    target: "audit",
                    node = %grant.node,
                    identity = %grant.identity,
                    decision = "allow",
                    reason = grant.reason,
                    ttl_secs = grant.ttl.as_secs(),
                    peer = %peer,
                    "certificate issued"
                );
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: grant.chain,
                }))
            }
            Err(denial) => {
                self.metrics.refused(denial.code);
                tracing::info!(
                    target: "audit",
                    node = denial.node.as_deref().unwrap_or("-"),
                    identity = %denial.identity.as_ref().map_or_else(|| "-".to_string(), Identity::to_string),
                    decision = "deny",
                    code = ?denial.code,
                    reason = %denial.message,
                    peer = %peer,
                    "certificate refused"
                );
                Err(Status::new(denial.code, denial.message))
            }
        }
    }
}
