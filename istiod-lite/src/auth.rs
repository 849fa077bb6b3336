//! Who is calling the CA and the config API: the node tunnel of one node.
//!
//! Two ways to prove it, tried in this order:
//! - a bearer token from the tokens file ([`Tokens`]: the local cluster);
//! - on Kubernetes, a projected ServiceAccount token with audience `istio-ca`, bound to a pod,
//!   checked with the TokenReview API ([`TokenReviewer`]); the caller's node is that pod's
//!   `spec.nodeName`, as the API server has it (Istio's node authorization), so a token bound
//!   to a pod on another node cannot speak for this one. The node tunnel's service account
//!   (`istio-system/ztunnel` by default) speaks for its node's pods; any other workload (a
//!   waypoint) only for itself ([`NodeCaller::only`]).
//!
//! Every refusal carries its reason, which the services log; the caller only hears
//! "unauthenticated". Reviews are cached for [`REVIEW_CACHE_TTL`] by the token's SHA-256, so a
//! reconnecting fleet does not flood the API server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

use crate::pods::ClusterPods;
use crate::tokens::{sha256, NodeCaller, Tokens};

/// The audience projected tokens for the mesh carry (Istio's).
pub const AUDIENCE: &str = "istio-ca";

/// How long a successful review is trusted without asking the API server again.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);

/// The `user.extra` key naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The `user.extra` key naming the node of that pod (Kubernetes 1.30+).
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Authenticates callers by the `authorization` header.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<Tokens>,
    reviewer: Option<TokenReviewer>,
}

impl Authenticator {
    /// Callers with a token from `tokens` only.
    pub fn tokens(tokens: Tokens) -> Self {
        Authenticator {
            tokens: Some(tokens),
            reviewer: None,
        }
    }

    /// Callers with a token from `tokens` (if any), else a reviewed ServiceAccount token.
    pub fn kubernetes(tokens: Option<Tokens>, reviewer: TokenReviewer) -> Self {
        Authenticator {
            tokens,
            reviewer: Some(reviewer),
        }
    }

    /// How many static tokens are known.
    pub fn static_tokens(&self) -> usize {
        self.tokens.as_ref().map_or(0, Tokens::len)
    }

    /// The caller of an `authorization: Bearer <token>` header, or why it is refused.
    pub async fn authenticate_header(&self, header: &str) -> Result<NodeCaller, String> {
        let Some((scheme, token)) = header.trim().split_once(' ') else {
            return Err("the authorization header is not `Bearer <token>`".into());
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("authorization scheme {scheme:?} is not Bearer"));
        }
        let token = token.trim();
        if let Some(caller) = self.tokens.as_ref().and_then(|t| t.authenticate(token)) {
            return Ok(caller);
        }
        match &self.reviewer {
            Some(reviewer) => reviewer.review(token).await,
            None => Err("the token is not in the tokens file".into()),
        }
    }
}

/// Checks ServiceAccount tokens with the TokenReview API.
pub struct TokenReviewer {
    client: kube::Client,
    pods: Arc<ClusterPods>,
    /// `(namespace, name)` of the node tunnel's service account.
    tunnel: (String, String),
    trust_domain: String,
    cache: Mutex<HashMap<[u8; 32], (NodeCaller, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews with `client`; the node tunnel runs as `tunnel_account` (`namespace/name`);
    /// `pods` says where each pod is scheduled.
    pub fn new(
        client: kube::Client,
        pods: Arc<ClusterPods>,
        tunnel_account: &str,
        trust_domain: &str,
    ) -> anyhow::Result<Self> {
        let Some((ns, sa)) = tunnel_account.split_once('/') else {
            anyhow::bail!(
                "node tunnel service account {tunnel_account:?}: expected NAMESPACE/NAME"
            );
        };
        Ok(TokenReviewer {
            client,
            pods,
            tunnel: (ns.to_string(), sa.to_string()),
            trust_domain: trust_domain.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The node whose tunnel holds `token`, or why not.
    pub async fn review(&self, token: &str) -> Result<NodeCaller, String> {
        let key = sha256(token);
        if let Some((caller, at)) = self.cache().get(&key) {
            if at.elapsed() < REVIEW_CACHE_TTL {
                return Ok(caller.clone());
            }
        }
        let caller = self.ask(token).await?;
        let mut cache = self.cache();
        cache.retain(|_, (_, at)| at.elapsed() < REVIEW_CACHE_TTL);
        cache.insert(key, (caller.clone(), Instant::now()));
        Ok(caller)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (NodeCaller, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<NodeCaller, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(format!(
                "the API server does not accept the token: {}",
                status.error.as_deref().unwrap_or("not authenticated")
            ));
        }
        if status
            .audiences
            .as_ref()
            .is_some_and(|a| !a.iter().any(|a| a == AUDIENCE))
        {
            return Err(format!("the token is not for audience {AUDIENCE}"));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let account = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| format!("{username:?} is not a service account"))?;
        let (tunnel_ns, tunnel_sa) = (&self.tunnel.0, &self.tunnel.1);
        let tunnel = account == (tunnel_ns.as_str(), tunnel_sa.as_str());
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let pod = first(POD_NAME_EXTRA).ok_or_else(|| {
            "the token is not bound to a pod (use a projected service account token)".to_string()
        })?;
        let node = self.pods.node_of(account.0, &pod).ok_or_else(|| {
            format!(
                "pod {}/{pod} of the token is not scheduled on any node known here",
                account.0
            )
        })?;
        if let Some(claimed) = first(NODE_NAME_EXTRA) {
            if claimed != node {
                return Err(format!(
                    "the token names node {claimed}, but pod {}/{pod} is on {node}",
                    account.0
                ));
            }
        }
        // Any other workload speaks only for itself: its own identity, from its own pod.
        let only = if tunnel {
            None
        } else {
            let identity = mesh::Identity::new(&self.trust_domain, account.0, account.1)
                .map_err(|e| format!("service account {}/{}: {e}", account.0, account.1))?;
            Some(identity)
        };
        Ok(NodeCaller { node, only })
    }
}
