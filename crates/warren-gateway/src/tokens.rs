//! Gateway tokens: HS256 JWTs naming one workspace, signed with a server secret kept in
//! the data directory.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Audience of every gateway token, so no other JWT signed with the key passes.
pub const AUDIENCE: &str = "warren-gateway";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Workspace id.
    pub sub: String,
    /// The workspace's token generation at issue time; rotating bumps it.
    pub gen: i64,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the gateway token has expired")]
    Expired,
    #[error("invalid gateway token: {0}")]
    Invalid(String),
    #[error("gateway key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct GatewayKeys {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayKeys(..)")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl GatewayKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        GatewayKeys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }

    /// Read the signing secret at `path`, creating it (32 random bytes, mode 0600) on
    /// first use.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let err = |source| TokenError::Key {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(s) if s.trim().len() >= 64 => return Ok(Self::from_secret(s.trim().as_bytes())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let secret = hex::encode(b);
        let tmp = path.with_extension("tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(secret.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(Self::from_secret(secret.as_bytes()))
    }

    /// A token for `workspace_id` valid for `ttl`; returns it and its expiry (Unix s).
    pub fn issue(&self, workspace_id: &str, gen: i64, ttl: Duration) -> (String, u64) {
        let iat = unix_now();
        let exp = iat + ttl.as_secs().max(1);
        let claims = Claims {
            sub: workspace_id.to_string(),
            gen,
            aud: AUDIENCE.into(),
            iat,
            exp,
        };
        // Encoding an HS256 token with a byte secret cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .unwrap_or_default();
        (token, exp)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        match jsonwebtoken::decode::<Claims>(token, &self.dec, &v) {
            Ok(d) => Ok(d.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire_and_tamper() {
        let k = GatewayKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let (t, exp) = k.issue("ws_a", 3, Duration::from_secs(60));
        let c = k.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.gen, c.exp), ("ws_a", 3, exp));
        let other = GatewayKeys::from_secret(b"another-secret-another-secret-xx");
        assert!(matches!(other.verify(&t), Err(TokenError::Invalid(_))));
        // An expired token (exp in the past) is told apart.
        let claims = Claims {
            sub: "ws_a".into(),
            gen: 0,
            aud: AUDIENCE.into(),
            iat: 1,
            exp: 2,
        };
        let old = jsonwebtoken::encode(&Header::default(), &claims, &k.enc).unwrap();
        assert!(matches!(k.verify(&old), Err(TokenError::Expired)));
        assert!(matches!(k.verify("not-a-jwt"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gateway.key");
        let a = GatewayKeys::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = GatewayKeys::load_or_create(&p).unwrap();
        let (t, _) = a.issue("ws_b", 0, Duration::from_secs(60));
        assert_eq!(b.verify(&t).unwrap().sub, "ws_b");
    }
}
