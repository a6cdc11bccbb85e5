//! A list of addresses to import into the suppression list: one address
//! per line, or a CSV export (from another tool's unsubscribe list, say)
//! with an `address`, `email` or `phone` column.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AddressListError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Csv(#[from] ::csv::Error),
    #[error("line {line}: `{value}` is not an email address or phone number")]
    Invalid { line: u64, value: String },
}

const COLUMNS: [&str; 3] = ["address", "email", "phone"];

pub fn read_address_list(path: &Path) -> Result<Vec<String>, AddressListError> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)?;
    let mut out = Vec::new();
    let mut column = 0;
    for (i, record) in reader.records().enumerate() {
        let record = record?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if i == 0
            && let Some(c) = record
                .iter()
                .position(|h| COLUMNS.contains(&h.trim().to_ascii_lowercase().as_str()))
        {
            column = c;
            continue;
        }
        let value = record.get(column).unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        let looks_like = value.contains('@') || value.starts_with('+');
        if !looks_like {
            return Err(AddressListError::Invalid {
                line,
                value: value.to_string(),
            });
        }
        out.push(value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lists_and_csv_exports_both_read() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "ana@example.org\n\n+4915112345678\n").unwrap();
        assert_eq!(
            read_address_list(&plain).unwrap(),
            vec!["ana@example.org", "+4915112345678"]
        );
        let csv = dir.path().join("export.csv");
        std::fs::write(&csv, "id,Email,when\n1,bo@example.org,2026-01-01\n").unwrap();
        assert_eq!(read_address_list(&csv).unwrap(), vec!["bo@example.org"]);
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "ana@example.org\nnot an address\n").unwrap();
        assert!(matches!(
            read_address_list(&bad),
            Err(AddressListError::Invalid { line: 2, .. })
        ));
    }
}
