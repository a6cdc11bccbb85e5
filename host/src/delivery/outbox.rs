//! The outbox: one JSON line per delivered message in a file. A batch is
//! appended with one write and synced before it counts as delivered; a line
//! is whole or absent, since a torn tail left by a crash is cut on open.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;

use super::{Dispatch, Outcome, Transport};

pub struct OutboxTransport {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    /// Distributed workers each append to their own file in one folder;
    /// reconciling a dead worker's claims reads all of them.
    peers: Option<PathBuf>,
}

impl OutboxTransport {
    /// `<dir>/<worker>.jsonl`, one file per worker process (appends from
    /// several processes to one file could interleave with a torn tail).
    pub fn open_shared(dir: &Path, worker: &str) -> std::io::Result<OutboxTransport> {
        std::fs::create_dir_all(dir)?;
        let mut t = OutboxTransport::open(&dir.join(format!("{worker}.jsonl")))?;
        t.peers = Some(dir.to_path_buf());
        Ok(t)
    }

    pub fn open(path: &Path) -> std::io::Result<OutboxTransport> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        repair_torn_tail(&mut file)?;
        Ok(OutboxTransport {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
            peers: None,
        })
    }
}

/// Cuts anything after the last newline: a line a crash left half-written.
fn repair_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let n = (pos as usize).min(buf.len());
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = pos + i as u64 + 1;
            if keep != len {
                tracing::warn!(
                    cut = len - keep,
                    "outbox ended in a torn line (a crash mid-write); cutting it"
                );
                file.set_len(keep)?;
            }
            return Ok(());
        }
    }
    file.set_len(0)
}

#[derive(Deserialize)]
struct IdOnly {
    message_id: String,
}

#[async_trait]
impl Transport for OutboxTransport {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        // Stamped when written, after any wait for the provider's rate.
        let now = crate::schedule::clock::now_ms();
        for d in batch {
            let mut record = d.record.clone();
            record.sent_at = now;
            if serde_json::to_writer(&mut buf, &record).is_err() {
                return vec![Outcome::transient("cannot encode outbox line"); batch.len()];
            }
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await;
        match written {
            Ok(Ok(())) => vec![Outcome::Delivered; batch.len()],
            Ok(Err(e)) => {
                vec![
                    Outcome::transient(format!("cannot write {}: {e}", self.path.display()));
                    batch.len()
                ]
            }
            Err(e) => vec![Outcome::transient(format!("outbox writer failed: {e}")); batch.len()],
        }
    }

    async fn reconcile(&self, ids: &HashSet<String>) -> Option<HashSet<String>> {
        if ids.is_empty() {
            return Some(HashSet::new());
        }
        let files = match &self.peers {
            None => vec![self.path.clone()],
            Some(dir) => std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect(),
        };
        let ids = ids.clone();
        tokio::task::spawn_blocking(move || {
            let mut found = HashSet::new();
            for path in files {
                let reader = BufReader::with_capacity(1 << 20, File::open(&path).ok()?);
                for line in reader.lines() {
                    let line = line.ok()?;
                    if let Ok(rec) = serde_json::from_str::<IdOnly>(&line)
                        && ids.contains(&rec.message_id)
                    {
                        found.insert(rec.message_id);
                    }
                }
            }
            Some(found)
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        std::fs::write(
            &path,
            "{\"message_id\":\"a\"}\n{\"message_id\":\"b\"}\n{\"mess",
        )
        .unwrap();
        OutboxTransport::open(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"message_id\":\"a\"}\n{\"message_id\":\"b\"}\n"
        );
    }

    #[tokio::test]
    async fn reconcile_finds_written_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        std::fs::write(&path, "{\"message_id\":\"a\"}\n{\"message_id\":\"b\"}\n").unwrap();
        let t = OutboxTransport::open(&path).unwrap();
        let ids: HashSet<String> = ["a", "z"].iter().map(|s| s.to_string()).collect();
        assert_eq!(t.reconcile(&ids).await.unwrap(), ["a".to_string()].into());
    }
}
