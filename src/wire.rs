//! Conversions at the edge between wire types and domain values. Checks fail with [`Invalid`]:
//! a message a person can act on, which becomes `INVALID_ARGUMENT` in each service's one error
//! mapping (or directly, as a [`Status`], where a handler has no error type of its own).

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use tonic::Status;
use uuid::Uuid;

use crate::proto::v1::Money;

/// A protobuf timestamp from a UTC database time.
pub fn timestamp(t: NaiveDateTime) -> prost_types::Timestamp {
    let t = Utc.from_utc_datetime(&t);
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Like [`timestamp`], for optional times.
pub fn opt_timestamp(t: Option<NaiveDateTime>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// A UTC time from a protobuf timestamp.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// A field that fails a check; the message names the field and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Status {
        Status::invalid_argument(e.0)
    }
}

/// Parses a UUID field; `field` names it in the error.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Invalid> {
    if value.is_empty() {
        return Err(Invalid(format!("{field} is required")));
    }
    Uuid::parse_str(value).map_err(|_| {
        Invalid(format!(
            "{field} must be a UUID, got {:?}",
            truncate(value, 64)
        ))
    })
}

/// A required, non-empty text field.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Invalid> {
    let v = value.trim();
    if v.is_empty() {
        Err(Invalid(format!("{field} is required")))
    } else {
        Ok(v)
    }
}

/// Why `c` may not appear in a name people read (a display name, a token name): control
/// characters, bidirectional overrides and isolates (U+202E makes "txt.exe" read "exe.txt"),
/// zero-width and invisible characters (two names that look the same), and `<`/`>` (markup).
pub fn forbidden_in_names(c: char) -> Option<&'static str> {
    match c {
        '<' | '>' => Some("'<' and '>'"),
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Some("right-to-left and other direction controls"),
        '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{00AD}'
        | '\u{180E}' => Some("zero-width and invisible characters"),
        c if c.is_control() => Some("control characters (tabs, line breaks, ...)"),
        _ => None,
    }
}

/// A name people read: trimmed, 1 to `max` characters, none of [`forbidden_in_names`]. The
/// error names the field and what to change.
pub fn display_text<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, Invalid> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max {
        return Err(Invalid(format!("{field} must be 1-{max} characters")));
    }
    if let Some(what) = v.chars().find_map(forbidden_in_names) {
        return Err(Invalid(format!("{field} may not contain {what}")));
    }
    Ok(v)
}

/// A DNS label (RFC 1123): 1-`max` characters of a-z, 0-9 and '-', not starting or ending with
/// '-'. Catalog ids, Kubernetes names and each part of a host name are one.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Rupiah as wire money.
pub fn idr(amount: i64) -> Money {
    Money {
        amount,
        currency: "IDR".to_string(),
    }
}

/// At most `max` characters of `s`, for echoing input back in errors.
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Page size from a request: default 50, at most 500.
pub fn page_size(requested: u32) -> i64 {
    match requested {
        0 => 50,
        n => i64::from(n.min(500)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_people_read_refuse_markup_and_invisible_direction_tricks() {
        assert_eq!(
            display_text("name", "  Ani Wijaya ", 100).ok(),
            Some("Ani Wijaya")
        );
        assert_eq!(
            display_text("name", "Zoë 李 محمد", 100).ok(),
            Some("Zoë 李 محمد")
        );
        for (bad, why) in [
            ("", "1-100 characters"),
            ("<script>alert(1)</script>", "'<' and '>'"),
            ("admin\u{202E}gpj.exe", "direction controls"),
            ("\u{2067}ops", "direction controls"),
            ("ad\u{200B}min", "zero-width"),
            ("ad\u{FEFF}min", "zero-width"),
            ("line\nbreak", "control characters"),
        ] {
            let e = Status::from(display_text("display_name", bad, 100).expect_err(bad));
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(why), "{bad:?}: {}", e.message());
            assert!(e.message().starts_with("display_name"), "{}", e.message());
        }
        assert!(display_text("name", &"x".repeat(101), 100).is_err());
    }

    #[test]
    fn dns_labels_are_lower_case_letters_digits_and_inner_hyphens() {
        for good in ["a", "web", "kapal-7f3a", "0", "a-b-c", &"x".repeat(63)] {
            assert!(is_dns_label(good, 63), "{good:?} should be a label");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "-",
            "Web",
            "we_b",
            "we.b",
            "we b",
            "wéb",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_label(bad, 63), "{bad:?} should not be a label");
        }
        assert!(is_dns_label(&"x".repeat(20), 20));
        assert!(!is_dns_label(&"x".repeat(21), 20));
    }
}
