//! Address checks by channel.

use squall_pipeline_core::message::Channel;

pub fn validate_address(channel: Channel, address: &str) -> Result<(), String> {
    match channel {
        // lettre's parser is what the SMTP transport will use: an address it
        // accepts here is one it can send to.
        Channel::Email => address
            .parse::<lettre::Address>()
            .map(|_| ())
            .map_err(|e| format!("`{address}` is not a valid email address ({e})")),
        Channel::Sms => {
            if is_e164(address) {
                Ok(())
            } else {
                Err(format!(
                    "`{address}` is not an E.164 phone number like +4915112345678"
                ))
            }
        }
        Channel::Webhook => Ok(()),
    }
}

/// E.164: `+`, a non-zero country digit, 8 to 15 digits in all. A full
/// numbering-plan check (the `phonenumber` crate) would carry megabytes of
/// metadata for a check the SMS provider repeats anyway.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}
