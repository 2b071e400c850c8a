//! Pages of List and Wait answers: how many rows, how many bytes, and the
//! opaque tokens that say where the next page starts.
//!
//! A List token is the (creation time, id) of the last row sent: the next
//! page is the rows after it in that order, so rows created meanwhile come
//! on a later page and none is sent twice or skipped. A Wait token is the
//! index in the request's ids where the next page starts.

use prost::Message;
use tonic::Status;

use crate::core::table::Cursor;
use crate::core::CoreError;

/// Rows per page when the request names none.
pub const DEFAULT_PAGE: usize = 1_000;
/// The most rows a page holds, whatever the request asks.
pub const MAX_PAGE: usize = 5_000;
/// A page ends before its rows pass this many bytes (gRPC's default
/// message limit is 4 MiB; a row is bounded by [`crate::wire::list_row`]).
pub const PAGE_BYTES: usize = 2 << 20;

/// The page size a request asks for, within the server's bounds.
pub fn size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn bad(token: &str) -> Status {
    CoreError::BadPageToken(token.chars().take(64).collect()).into()
}

pub fn list_token(c: &Cursor) -> String {
    format!("l{}.{}", c.0, c.1)
}

/// The cursor a List token names (`None`: the first page).
pub fn list_cursor(token: &str) -> Result<Option<Cursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let (ms, id) = token
        .strip_prefix('l')
        .and_then(|t| t.split_once('.'))
        .ok_or_else(|| bad(token))?;
    let ms: i64 = ms.parse().map_err(|_| bad(token))?;
    Ok(Some((ms, id.to_owned())))
}

pub fn wait_token(index: &usize) -> String {
    format!("w{index}")
}

/// Where a Wait page starts (`None`: the first call, which waits).
pub fn wait_offset(token: &str, ids: usize) -> Result<Option<usize>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let n: usize = token
        .strip_prefix('w')
        .and_then(|t| t.parse().ok())
        .filter(|n| *n <= ids)
        .ok_or_else(|| bad(token))?;
    Ok(Some(n))
}

/// Takes rows until [`PAGE_BYTES`]; the token points after the last one
/// taken when some are left (or `more` says the source has more).
pub fn fill<K, T: Message>(
    rows: Vec<(K, T)>,
    more: bool,
    token: impl Fn(&K) -> String,
) -> (Vec<T>, String) {
    let total = rows.len();
    let mut out = Vec::with_capacity(total);
    let mut bytes = 0;
    let mut last = None;
    for (k, row) in rows {
        let len = row.encoded_len() + 8;
        if !out.is_empty() && bytes + len > PAGE_BYTES {
            break;
        }
        bytes += len;
        out.push(row);
        last = Some(k);
    }
    let cut = out.len() < total || more;
    let next = match (cut, last) {
        (true, Some(k)) => token(&k),
        _ => String::new(),
    };
    (out, next)
}

/// [`fill`] for a source with no page size of its own (Wait's ready rows,
/// indexed in the request): at most `limit` rows. The token names the index
/// after the last row sent.
pub fn fill_sized<T: Message>(
    rows: Vec<(usize, T)>,
    limit: usize,
    token: impl Fn(&usize) -> String,
) -> (Vec<T>, String) {
    let more = rows.len() > limit;
    let rows: Vec<(usize, T)> = rows
        .into_iter()
        .take(limit)
        .map(|(i, r)| (i + 1, r))
        .collect();
    fill(rows, more, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpctl_proto::v1::ProcessInfo;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let c = (1_700_000_000_123, "ab12".to_owned());
        assert_eq!(list_cursor(&list_token(&c)).unwrap(), Some(c));
        assert_eq!(list_cursor("").unwrap(), None);
        assert!(list_cursor("x").is_err());
        assert!(list_cursor("lnot.a").is_err());
        assert_eq!(wait_offset(&wait_token(&3), 5).unwrap(), Some(3));
        assert!(wait_offset("w6", 5).is_err());
    }

    #[test]
    fn a_page_stops_at_the_byte_budget_and_points_after_its_last_row() {
        let big = |i: usize| ProcessInfo {
            id: i.to_string(),
            cwd: "x".repeat(600 << 10),
            ..ProcessInfo::default()
        };
        let rows: Vec<(usize, ProcessInfo)> = (0..10).map(|i| (i, big(i))).collect();
        let (page, token) = fill(rows, false, |i| format!("{i}"));
        assert_eq!(page.len(), 3);
        assert_eq!(token, "2");
        let (page, token) = fill(vec![(0usize, big(0))], false, |i| format!("{i}"));
        assert_eq!((page.len(), token.as_str()), (1, ""));
        let (page, token) = fill(vec![(0usize, big(0))], true, |i| format!("{i}"));
        assert_eq!((page.len(), token.as_str()), (1, "0"));
    }
}
