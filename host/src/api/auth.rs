//! Bearer tokens with roles. Tokens are compared as SHA-256 digests, so
//! the comparison's timing says nothing about the secret.

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::{ApiConfig, Role};

pub struct Auth {
    tokens: Vec<([u8; 32], Role)>,
    /// No tokens configured: a loopback-only server where everyone is admin.
    open: bool,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn from_config(api: &ApiConfig) -> anyhow::Result<Auth> {
        let mut tokens = Vec::new();
        for t in &api.tokens {
            let value = std::env::var(&t.token_env).map_err(|_| {
                anyhow::anyhow!(
                    "the {} token's environment variable {} is not set: set it, or remove the [[api.token]] entry",
                    t.role.as_str(),
                    t.token_env
                )
            })?;
            if value.len() < 16 {
                anyhow::bail!(
                    "the token in {} is shorter than 16 characters: use a long random one (e.g. `openssl rand -hex 32`)",
                    t.token_env
                );
            }
            tokens.push((digest(&value), t.role));
        }
        Ok(Auth {
            open: tokens.is_empty(),
            tokens,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The caller's role: 401 without a valid token.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        if self.open {
            return Ok(Role::Admin);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token: send `Authorization: Bearer <token>`",
                )
            })?;
        let d = digest(token.trim());
        self.tokens
            .iter()
            .find(|(t, _)| *t == d)
            .map(|(_, r)| *r)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown bearer token"))
    }

    /// 401 without a token, 403 with one whose role is below `need`.
    pub fn require(&self, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
        let role = self.role(headers)?;
        if role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {} role; your token is {}",
                    need.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(role)
    }
}
