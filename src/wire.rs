//! Conversions at the edge between wire types and domain values, with `INVALID_ARGUMENT` errors
//! a person can act on.

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

/// Parses a UUID field; `field` names it in the error.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Uuid::parse_str(value).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} must be a UUID, got {:?}",
            truncate(value, 64)
        ))
    })
}

/// A required, non-empty text field.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    let v = value.trim();
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(v)
    }
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
