//! Caller authentication: bearer tokens the operator hands to node tunnels.
//!
//! The tokens file is YAML the operator controls:
//!
//! ```yaml
//! tokens:
//!   - token: "3f9c...long random string..."
//!     node: node-1
//! ```
//!
//! Each token proves "I am the node tunnel of `node`". Lookups compare SHA-256 digests of the
//! presented token against every known token in constant time, so neither timing nor length
//! tells a caller how close a guess was. The file is read once at start.

use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};
use serde::Deserialize;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Shortest token accepted in the file: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// An authenticated caller: the node tunnel of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCaller {
    /// The Kubernetes node name the token was issued for.
    pub node: String,
    /// For a workload speaking for itself (its own ServiceAccount token, e.g. a waypoint on
    /// Kubernetes): the only identity it may obtain. `None` for a node tunnel.
    pub only: Option<mesh::Identity>,
}

/// Why the tokens file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("tokens file {path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("tokens file {path}: expected `tokens: [{{token: ..., node: ...}}]`: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// An entry is unusable.
    #[error("tokens file {path}: entry {index} (node {node:?}): {reason}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// Zero-based position in the `tokens` list.
        index: usize,
        /// The entry's node, as written.
        node: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    node: String,
}

struct Known {
    digest: [u8; 32],
    node: String,
}

/// The tokens that authenticate node tunnels.
pub struct Tokens {
    known: Vec<Known>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads and checks the tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|error| TokensError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the tokens file's contents; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let file: TokensFile = serde_saphyr::from_str_with_options(text, resources::yaml_options())
            .map_err(|e| TokensError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut known: Vec<Known> = Vec::with_capacity(file.tokens.len());
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let bad = |reason: &str| TokensError::Entry {
                path: path.to_path_buf(),
                index,
                node: entry.node.clone(),
                reason: reason.to_string(),
            };
            if entry.node.trim().is_empty() {
                return Err(bad("the node name is empty"));
            }
            if entry.token.len() < MIN_TOKEN_LEN {
                return Err(bad("the token is shorter than 16 characters"));
            }
            if !entry.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "the token must be visible ASCII without spaces (it travels in an HTTP header)",
                ));
            }
            let digest = sha256(&entry.token);
            if let Some(other) = known.iter().position(|k| k.digest == digest) {
                return Err(bad(&format!(
                    "the same token is already given to entry {other}; each node needs its own"
                )));
            }
            known.push(Known {
                digest,
                node: entry.node,
            });
        }
        Ok(Tokens { known })
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no token is known (then every caller is refused).
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The caller a presented token belongs to, if any. Compares against every known token.
    pub fn authenticate(&self, presented: &str) -> Option<NodeCaller> {
        let presented = sha256(presented);
        // Branch-free over the secret: remember the matching index without early exit.
        let mut found = u64::MAX;
        for (index, known) in self.known.iter().enumerate() {
            let hit: Choice = known.digest.ct_eq(&presented);
            found.conditional_assign(&(index as u64), hit);
        }
        let index = usize::try_from(found).ok()?;
        self.known.get(index).map(|k| NodeCaller {
            node: k.node.clone(),
            only: None,
        })
    }

    /// Authenticates an `authorization` header value of the form `Bearer <token>`.
    pub fn authenticate_header(&self, header: &str) -> Option<NodeCaller> {
        let (scheme, token) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.authenticate(token.trim())
    }
}

/// SHA-256 of a token: what is kept and compared instead of the token itself.
pub(crate) fn sha256(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, s.as_bytes()).as_ref());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = r#"
tokens:
  - token: "node-one-token-0123456789"
    node: node-1
  - token: "node-two-token-0123456789"
    node: node-2
"#;

    fn path() -> &'static Path {
        Path::new("/etc/istiod-lite/tokens.yaml")
    }

    #[test]
    fn tokens_map_to_their_node_and_unknown_tokens_to_none() {
        let tokens = Tokens::parse(FILE, path()).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.authenticate("node-two-token-0123456789"),
            Some(NodeCaller {
                only: None,
                node: "node-2".into()
            })
        );
        assert_eq!(tokens.authenticate("node-two-token-012345678"), None);
        assert_eq!(tokens.authenticate(""), None);
        assert_eq!(
            tokens
                .authenticate_header("Bearer node-one-token-0123456789")
                .map(|c| c.node),
            Some("node-1".into())
        );
        assert_eq!(
            tokens
                .authenticate_header("bearer node-one-token-0123456789")
                .map(|c| c.node),
            Some("node-1".into())
        );
        assert_eq!(
            tokens.authenticate_header("Basic node-one-token-0123456789"),
            None
        );
        assert_eq!(
            tokens.authenticate_header("node-one-token-0123456789"),
            None
        );
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let cases = [
            ("not: [valid", "expected `tokens:"),
            ("tokens: [{token: abc, node: n}]", "shorter than 16"),
            ("tokens: [{token: 0123456789abcdefgh, node: ''}]", "node name is empty"),
            ("tokens: [{token: '0123456789 abcdefgh', node: n}]", "visible ASCII"),
            (
                "tokens: [{token: 0123456789abcdefgh, node: a}, {token: 0123456789abcdefgh, node: b}]",
                "already given to entry 0",
            ),
            ("tokens: [{token: 0123456789abcdefgh, nod: a}]", "expected `tokens:"),
        ];
        for (text, want) in cases {
            let err = Tokens::parse(text, path()).unwrap_err().to_string();
            assert!(err.contains("/etc/istiod-lite/tokens.yaml"), "{err}");
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = Tokens::load(Path::new("/nonexistent/tokens.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tokens.yaml"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_does_not_reveal_tokens() {
        let tokens = Tokens::parse(FILE, path()).unwrap();
        assert!(!format!("{tokens:?}").contains("token-0123"));
    }
}
