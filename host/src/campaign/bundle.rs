//! A campaign as distributed workers receive it: the campaign file's text,
//! the audience's field names (the audience itself travels through the
//! queue) and the bytes of any plugin components. `squall launch` stores
//! it; a worker on another machine unpacks it into its data directory and
//! loads it exactly as `squall run` would load the original.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Campaign, Diagnostics};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub file_name: String,
    pub text: String,
    pub columns: Vec<String>,
    /// Plugin path as the campaign file writes it → component bytes (base64).
    pub plugins: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "plugin path `{0}` leaves the campaign's folder; for distributed workers, keep plugins in or below the folder of the campaign file"
    )]
    PluginOutside(String),
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot unpack the campaign into {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the stored campaign is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Invalid(Diagnostics),
}

fn inside(relative: &str) -> Result<&Path, BundleError> {
    let p = Path::new(relative);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p)
    } else {
        Err(BundleError::PluginOutside(relative.to_string()))
    }
}

impl Bundle {
    pub fn of(campaign: &Campaign) -> Result<Bundle, BundleError> {
        let dir = campaign.path.parent().unwrap_or(Path::new("."));
        let mut plugins = BTreeMap::new();
        let s = &campaign.file.stages;
        for p in [&s.segmenter, &s.personaliser, &s.sender]
            .into_iter()
            .flatten()
        {
            let relative = p.get_ref();
            let path = dir.join(inside(relative)?);
            let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
                path: path.display().to_string(),
                source,
            })?;
            plugins.insert(
                relative.clone(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        Ok(Bundle {
            file_name: campaign
                .path
                .file_name()
                .map_or("campaign.toml".into(), |n| n.to_string_lossy().into_owned()),
            text: campaign.text.clone(),
            columns: campaign.columns.clone(),
            plugins,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("bundles serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        serde_json::from_slice(bytes).map_err(|e| BundleError::Damaged(e.to_string()))
    }

    /// Writes the campaign file and plugins under `dir` and loads them.
    pub fn unpack(&self, dir: &Path) -> Result<Campaign, BundleError> {
        let write = |path: PathBuf, bytes: &[u8]| -> Result<(), BundleError> {
            let fail = |source| BundleError::Write {
                path: path.display().to_string(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(fail)?;
            }
            // Whole or not at all: another worker may be unpacking too.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(fail)?;
            std::fs::rename(&tmp, &path).map_err(fail)
        };
        let file_name = inside(&self.file_name)?;
        for (relative, b64) in &self.plugins {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| BundleError::Damaged(format!("plugin {relative}: {e}")))?;
            write(dir.join(inside(relative)?), &bytes)?;
        }
        let path = dir.join(file_name);
        write(path.clone(), self.text.as_bytes())?;
        Campaign::load_stored(&path, self.columns.clone()).map_err(BundleError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_survives_the_round_trip_without_its_audience() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/spring-sale/campaign.toml");
        let original = Campaign::load(&example).unwrap();
        let bundle = Bundle::from_bytes(&Bundle::of(&original).unwrap().to_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unpacked = bundle.unpack(dir.path()).unwrap();
        assert_eq!(unpacked.hash, original.hash);
        assert_eq!(unpacked.columns, original.columns);
        assert_eq!(unpacked.id(), original.id());
        assert!(!dir.path().join("audience.csv").exists());
    }

    #[test]
    fn plugin_paths_may_not_leave_the_folder() {
        assert!(matches!(
            inside("../evil.wasm"),
            Err(BundleError::PluginOutside(_))
        ));
        assert!(matches!(
            inside("/etc/passwd"),
            Err(BundleError::PluginOutside(_))
        ));
        assert!(inside("plugins/mine.wasm").is_ok());
    }
}
