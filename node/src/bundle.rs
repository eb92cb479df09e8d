//! Bundles of signed records for `tincan export` and `tincan import`:
//! JSON with each record's wire bytes in base64, so a bundle survives e-mail
//! and chat, and every record inside still carries its author's signature.

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tincan_core::SignedRecord;

const FORMAT: &str = "tincan-records";
const VERSION: u32 = 1;

/// A bundle as stored.
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    /// Always "tincan-records".
    pub format: String,
    /// Bundle format version.
    pub version: u32,
    /// Wire bytes of each record, base64.
    pub records: Vec<String>,
}

impl Bundle {
    /// A bundle of these records.
    pub fn new(records: &[SignedRecord]) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Bundle {
            format: FORMAT.into(),
            version: VERSION,
            records: records.iter().map(|r| b64.encode(r.to_bytes())).collect(),
        }
    }

    /// Parses a bundle's JSON.
    pub fn parse(text: &str) -> Result<Self> {
        let b: Bundle =
            serde_json::from_str(text).context("not a tincan record bundle (bad JSON)")?;
        if b.format != FORMAT {
            bail!("not a tincan record bundle (format is {:?})", b.format);
        }
        if b.version != VERSION {
            bail!(
                "record bundle version {} is unknown to this tincan: upgrade it",
                b.version
            );
        }
        Ok(b)
    }

    /// The wire bytes of each record, or why an entry is not base64.
    pub fn wire(&self) -> Vec<Result<Vec<u8>, String>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.records
            .iter()
            .map(|s| b64.decode(s).map_err(|e| format!("not base64: {e}")))
            .collect()
    }
}
