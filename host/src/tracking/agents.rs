//! Who fetched a pixel or followed a link: a person's mail client, or a
//! machine acting ahead of one (Apple Mail Privacy Protection prefetches
//! every image; security gateways follow every link). Machine events are
//! kept and shown, but left out of open and click rates by default.
//!
//! The signals are the ones the industry uses: Apple's prefetch proxy
//! sends a bare `Mozilla/5.0` agent, scanners name themselves. No list is
//! complete; this one errs on the side of counting a person.

/// Substrings (lower case) of agents that are not a person reading.
const MACHINE_MARKERS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "preview",
    "prefetch",
    "barracuda",
    "mimecast",
    "proofpoint",
    "safelinks",
    "symantec",
    "trendmicro",
    "fortiguard",
    "cloudmark",
    "python-requests",
    "go-http-client",
    "curl/",
    "wget/",
    "headlesschrome",
];

pub fn is_machine(user_agent: Option<&str>) -> bool {
    let Some(ua) = user_agent.map(str::trim) else {
        return true;
    };
    // Apple MPP's proxy: exactly this, with no platform or engine.
    if ua.is_empty() || ua == "Mozilla/5.0" {
        return true;
    }
    let ua = ua.to_ascii_lowercase();
    MACHINE_MARKERS.iter().any(|m| ua.contains(m))
}

#[cfg(test)]
mod tests {
    use super::is_machine;

    #[test]
    fn people_and_machines() {
        for person in [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        ] {
            assert!(!is_machine(Some(person)), "{person}");
        }
        for machine in [
            None,
            Some(""),
            Some("Mozilla/5.0"),
            Some("Barracuda Sentinel (EE)"),
            Some("curl/8.5.0"),
            Some("Mozilla/5.0 (compatible; Googlebot/2.1)"),
        ] {
            assert!(is_machine(machine), "{machine:?}");
        }
    }
}
