//! Makes a rendered message trackable: signed one-click unsubscribe URL,
//! click links rewritten through `/c/{token}`, an open pixel in HTML.
//!
//! This runs on the host side of the personalise stage, after the
//! component rendered the message: the signing key never enters a Wasm
//! stage, so a customer's personaliser plugin cannot forge tracking links.

use std::cell::Cell;

use lol_html::html_content::ContentType;
use lol_html::{HtmlRewriter, Settings, element};
use squall_pipeline_core::template::Rendered;

use super::token::{Link, LinkKind, Signer};
use crate::store::MessageRef;

/// A campaign's tracking settings with the deployment's signing key.
#[derive(Clone)]
pub struct Tracker {
    signer: Signer,
    /// Where `squall serve` answers, e.g. `https://t.example.com`.
    base: String,
    opens: bool,
    clicks: bool,
}

impl Tracker {
    pub fn new(key: &[u8], base_url: &str, opens: bool, clicks: bool) -> Tracker {
        Tracker {
            signer: Signer::new(key),
            base: base_url.trim_end_matches('/').to_string(),
            opens,
            clicks,
        }
    }

    fn url(&self, kind: LinkKind, path: &str, m: &MessageRef, extra: &str) -> String {
        let token = self.signer.sign(&Link {
            kind,
            message: m.clone(),
            extra: extra.to_string(),
        });
        format!("{}/{path}/{token}", self.base)
    }

    pub fn from_settings(t: &crate::campaign::TrackingSection, key: &[u8]) -> Tracker {
        Tracker::new(key, t.base_url.get_ref(), t.track_opens, t.track_clicks)
    }

    pub fn unsubscribe_url(&self, m: &MessageRef, address: &str) -> String {
        self.url(LinkKind::Unsubscribe, "u", m, address)
    }

    fn click_url(&self, m: &MessageRef, target: &str) -> String {
        self.url(LinkKind::Click, "c", m, target)
    }

    /// Links worth tracking: web links that do not already point at us.
    fn trackable(&self, url: &str) -> bool {
        (url.starts_with("https://") || url.starts_with("http://"))
            && !url.starts_with(&format!("{}/", self.base))
    }

    /// Rewrites links and adds the open pixel, as the campaign asks.
    pub fn decorate(&self, m: &MessageRef, content: &mut Rendered) -> Result<(), String> {
        if self.clicks {
            content.text = self.rewrite_text(m, &content.text);
        }
        if (self.clicks || self.opens)
            && let Some(html) = &content.html
        {
            content.html = Some(self.rewrite_html(m, html)?);
        }
        Ok(())
    }

    fn rewrite_text(&self, m: &MessageRef, text: &str) -> String {
        let mut finder = linkify::LinkFinder::new();
        finder.kinds(&[linkify::LinkKind::Url]);
        let mut out = String::with_capacity(text.len() + 128);
        let mut last = 0;
        for link in finder.links(text) {
            if self.trackable(link.as_str()) {
                out.push_str(&text[last..link.start()]);
                out.push_str(&self.click_url(m, link.as_str()));
                last = link.end();
            }
        }
        out.push_str(&text[last..]);
        out
    }

    fn rewrite_html(&self, m: &MessageRef, html: &str) -> Result<String, String> {
        let pixel = self.opens.then(|| {
            format!(
                r#"<img src="{}" width="1" height="1" alt="" style="display:none;border:0">"#,
                self.url(LinkKind::Open, "o", m, "")
            )
        });
        let body_seen = Cell::new(false);
        let mut out = Vec::with_capacity(html.len() + 256);
        {
            let mut handlers = Vec::new();
            if self.clicks {
                handlers.push(element!("a[href]", |el| {
                    if let Some(href) = el.get_attribute("href") {
                        // Attribute text is HTML: `&amp;` is a `&` of the URL.
                        let target = href.trim().replace("&amp;", "&");
                        if self.trackable(&target) {
                            el.set_attribute("href", &self.click_url(m, &target))?;
                        }
                    }
                    Ok(())
                }));
            }
            if let Some(pixel) = &pixel {
                handlers.push(element!("body", |el| {
                    el.append(pixel, ContentType::Html);
                    body_seen.set(true);
                    Ok(())
                }));
            }
            let mut rewriter = HtmlRewriter::new(
                Settings {
                    element_content_handlers: handlers,
                    ..Settings::new()
                },
                |chunk: &[u8]| out.extend_from_slice(chunk),
            );
            rewriter
                .write(html.as_bytes())
                .and_then(|_| rewriter.end())
                .map_err(|e| format!("cannot add tracking to the HTML body: {e}"))?;
        }
        let mut html = String::from_utf8(out).map_err(|e| e.to_string())?;
        // A fragment without <body> (most templates): the pixel goes last.
        if let Some(pixel) = pixel
            && !body_seen.get()
        {
            html.push_str(&pixel);
        }
        Ok(html)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> MessageRef {
        MessageRef {
            campaign: "c".into(),
            message_id: "m1".into(),
            recipient_id: "r1".into(),
            segment: "vip".into(),
            variant: "a".into(),
            wave: 0,
        }
    }

    #[test]
    fn links_are_rewritten_and_sign_their_target() {
        let t = Tracker::new(b"k", "https://t.example.com/", true, true);
        let mut r = Rendered {
            subject: "s".into(),
            text: "Shop now: https://shop.example.com/sale?a=1&b=2 or write to me@example.com.".into(),
            html: Some(
                r##"<p><a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a> <a href="mailto:x@y.z">mail</a> <a href="#top">top</a></p>"##
                    .into(),
            ),
        };
        t.decorate(&m(), &mut r).unwrap();
        assert!(!r.text.contains("https://shop.example.com"), "{}", r.text);
        assert!(
            r.text.contains("me@example.com"),
            "emails are not links: {}",
            r.text
        );
        let html = r.html.unwrap();
        assert!(
            html.contains("mailto:x@y.z") && html.contains("href=\"#top\""),
            "{html}"
        );
        assert!(
            html.ends_with("style=\"display:none;border:0\">"),
            "pixel last: {html}"
        );
        let signer = Signer::new(b"k");
        let token = html
            .split("https://t.example.com/c/")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        let link = signer.verify(token).unwrap();
        assert_eq!(
            (link.kind, link.extra.as_str()),
            (LinkKind::Click, "https://shop.example.com/sale?a=1&b=2")
        );
    }

    #[test]
    fn the_pixel_goes_inside_body_and_nothing_changes_when_tracking_is_off() {
        let t = Tracker::new(b"k", "https://t.example.com", true, false);
        let mut r = Rendered {
            subject: "s".into(),
            text: "https://shop.example.com".into(),
            html: Some("<html><body><p>Hi</p></body></html>".into()),
        };
        t.decorate(&m(), &mut r).unwrap();
        assert_eq!(r.text, "https://shop.example.com");
        let html = r.html.unwrap();
        assert!(
            html.contains("/o/") && html.ends_with("</body></html>"),
            "{html}"
        );
        let off = Tracker::new(b"k", "https://t.example.com", false, false);
        let mut r2 = Rendered {
            subject: "s".into(),
            text: "https://a.example".into(),
            html: Some("<a href=\"https://a.example\">a</a>".into()),
        };
        off.decorate(&m(), &mut r2).unwrap();
        assert_eq!(
            r2.html.as_deref(),
            Some("<a href=\"https://a.example\">a</a>")
        );
    }
}
