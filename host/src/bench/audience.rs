//! A synthetic audience and campaign for the benchmark, from a fixed seed.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const COUNTRIES: &[&str] = &["DE", "FR", "US", "GB", "ES", "IT", "NL", "IN"];
const NAMES: &[&str] = &[
    "Ana", "Ben", "Chloé", "Dev", "Emil", "Fatima", "Gita", "Hugo", "", "Jun",
];

pub const CAMPAIGN: &str = r#"
[campaign]
id = "bench"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "vip"
rule = 'lifetime_value > 1500 && country in ["DE", "FR", "NL"]'

[[segment]]
name = "active"
rule = "orders >= 3"

[[segment]]
name = "everyone"
rule = "true"

[[message]]
segment = "vip"
variant = "a"
subject = "{{ first_name | default: 'there' }}, early access for you"
text = "Hi {{ first_name | default: 'there' }}, you have spent {{ lifetime_value }} with us. Early access starts now."
html = "<p>Hi {{ first_name | default: 'there' | escape }},</p><p>early access starts now.</p>"

[[message]]
segment = "vip"
variant = "b"
subject = "Early access, {{ first_name | default: 'friend' }}"
text = "{{ first_name | default: 'Friend' }}, our spring sale opens early for you."

[[message]]
segment = "active"
subject = "{{ orders }} orders and counting"
text = "Thanks for {{ orders }} orders, {{ first_name | default: 'there' }}. Spring sale: 20% off."

[[message]]
segment = "everyone"
subject = "The spring sale is here"
text = "Hello {{ first_name | default: 'there' }}, the spring sale is here."

[delivery]
transport = "null"
from = "Shop <news@example.com>"
"#;

/// Writes `audience.csv` and `campaign.toml` into `dir`; returns the campaign path.
pub fn write(dir: &Path, n: u64) -> std::io::Result<PathBuf> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out =
        BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join("audience.csv"))?);
    writeln!(out, "id,email,first_name,country,lifetime_value,orders")?;
    for i in 0..n {
        writeln!(
            out,
            "{i},user{i}@example.com,{},{},{:.2},{}",
            NAMES[rng.random_range(0..NAMES.len())],
            COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            rng.random_range(0.0..3000.0),
            rng.random_range(0..8)
        )?;
    }
    out.flush()?;
    let path = dir.join("campaign.toml");
    std::fs::write(&path, CAMPAIGN)?;
    Ok(path)
}
