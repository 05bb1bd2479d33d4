//! Keyset pagination for listings ordered newest first by `(created_at, id)`, the same page
//! tokens from every service.
//!
//! A page token is opaque to clients: URL-safe base64 of the last row's creation time
//! (nanoseconds since the epoch) and id. The next page is the rows strictly before that key, so
//! an index on `(…, created_at, id)` serves every page in the same time, and rows inserted while a
//! client pages do not shift the pages (no duplicates, no gaps).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDateTime};
use tonic::Status;

/// The key of the last row of a page: the next page starts after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: NaiveDateTime,
    pub id: String,
}

fn invalid() -> Status {
    Status::invalid_argument(
        "page_token is not one this service returned; start again without a page_token",
    )
}

/// The cursor of a page token; `None` for the first page (empty token).
pub fn parse(token: &str) -> Result<Option<Cursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > 200 {
        return Err(invalid());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (nanos, id) = raw.split_once('|').ok_or_else(invalid)?;
    let nanos: i64 = nanos.parse().map_err(|_| invalid())?;
    if id.is_empty() || id.len() > 64 {
        return Err(invalid());
    }
    Ok(Some(Cursor {
        at: DateTime::from_timestamp_nanos(nanos).naive_utc(),
        id: id.to_string(),
    }))
}

/// The token of the page after the row keyed `(at, id)`.
pub fn token(at: NaiveDateTime, id: &str) -> String {
    // Timestamps outside ±292 years of 1970 do not occur; 0 would only restart the listing.
    let nanos = at.and_utc().timestamp_nanos_opt().unwrap_or(0);
    URL_SAFE_NO_PAD.encode(format!("{nanos}|{id}"))
}

/// For listings ordered oldest first by an increasing numeric id (billing's subscription
/// events): the id of the last row of the previous page, from a token made by [`token`] with
/// the id written in decimal; `None` for the first page. The next page is the rows with a
/// greater id.
pub fn parse_after_id(token: &str) -> Result<Option<i64>, Status> {
    parse(token)?
        .map(|c| c.id.parse::<i64>().map_err(|_| invalid()))
        .transpose()
}

/// Splits `limit + 1` loaded rows into the page and the next page's token (empty on the last
/// page); `key` gives a row's `(created_at, id)`.
pub fn split<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> (NaiveDateTime, &str),
) -> (Vec<T>, String) {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = match rows.last() {
        Some(last) if more => {
            let (at, id) = key(last);
            token(at, id)
        }
        _ => String::new(),
    };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
            .and_then(|d| d.and_hms_nano_opt(19, 30, 1, 123_456_789))
            .expect("valid time");
        let t = token(at, "0b9f6c1e-4a5d-4c4e-9a57-6f7e0f1d2c3b");
        assert_eq!(
            parse(&t).expect("parses"),
            Some(Cursor {
                at,
                id: "0b9f6c1e-4a5d-4c4e-9a57-6f7e0f1d2c3b".into()
            })
        );
        assert_eq!(parse("").expect("empty"), None);
        for bad in [
            "50",
            "!!",
            &URL_SAFE_NO_PAD.encode("x|id"),
            &URL_SAFE_NO_PAD.encode("1|"),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn billing_tokens_of_the_old_format_are_rejected() {
        // Billing's tokens were `<µs since the epoch>.<id>` before it shared these; a client
        // holding one starts its listing again.
        let e = parse("1738540800123456.0190f3c2-7b1e-7c3a-9d2e-5f4a3b2c1d0e").expect_err("old");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("start again"), "{}", e.message());
    }

    #[test]
    fn numeric_id_tokens_round_trip_and_reject_other_ids() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("valid")
            .naive_utc();
        assert_eq!(
            parse_after_id(&token(at, "203")).expect("parses"),
            Some(203)
        );
        assert_eq!(parse_after_id("").expect("empty"), None);
        let e = parse_after_id(&token(at, "0b9f6c1e")).expect_err("not a number");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn pages_split_with_a_next_token() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("valid")
            .naive_utc();
        let rows = vec![(at, "c"), (at, "b"), (at, "a")];
        let (page, next) = split(rows.clone(), 2, |r| (r.0, r.1));
        assert_eq!(page, rows[..2].to_vec());
        assert_eq!(
            parse(&next).expect("parses"),
            Some(Cursor { at, id: "b".into() })
        );
        let (page, next) = split(rows[2..].to_vec(), 2, |r| (r.0, r.1));
        assert_eq!((page.len(), next.as_str()), (1, ""));
    }
}
