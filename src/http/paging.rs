//! Pagination of the admin API's lists: `limit` and an opaque `cursor` in, a
//! `nextCursor` out. A cursor is the position of the last item shown, in
//! URL-safe base64 so that clients treat it as a token, not as something to build.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::SessionId;
use crate::domain::listing::Position;
use crate::domain::settings::MAX_ID_BYTES;
use crate::error::ApiError;

/// Items per page when the client names no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most items one page holds, so one request cannot ask for everything.
pub const MAX_LIMIT: u32 = 1000;
/// A cursor holds at most a session id and an offer id: anything longer is not
/// one this server gave.
const MAX_CURSOR_BYTES: usize = 4 * (36 + MAX_ID_BYTES);

/// The paging parameters, as strings so that a bad one gets a clear message
/// (documented as what they must be).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page: 1 to 1000, 100 if absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The previous page's `nextCursor`, as it was given; absent for the first page.
    pub cursor: Option<String>,
}

impl Paging {
    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] if absent.
    pub fn limit(&self) -> Result<u32, ApiError> {
        let Some(limit) = &self.limit else {
            return Ok(DEFAULT_LIMIT);
        };
        match limit.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::InvalidRequest(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ))),
        }
    }

    /// The decoded cursor, if one was given.
    fn cursor(&self) -> Result<Option<String>, ApiError> {
        let Some(cursor) = self.cursor.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        let bad = || ApiError::InvalidRequest("cursor is not one this server gave (use nextCursor as it is)".into());
        if cursor.len() > MAX_CURSOR_BYTES {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        String::from_utf8(bytes).map(Some).map_err(|_| bad())
    }

    /// The cursor of a list of publishers: the last publisher id shown.
    pub fn publisher_cursor(&self) -> Result<Option<String>, ApiError> {
        self.cursor()
    }

    /// The cursor of a list of sessions: the last session shown.
    pub fn session_cursor(&self) -> Result<Option<Position>, ApiError> {
        let Some(text) = self.cursor()? else {
            return Ok(None);
        };
        // A session id has a fixed length: the offer id is the rest.
        let position = text.split_at_checked(36).and_then(|(id, offer_id)| {
            Some(Position {
                session_id: SessionId::parse(id)?,
                offer_id: offer_id.to_owned(),
            })
        });
        position.map(Some).ok_or_else(|| {
            ApiError::InvalidRequest("cursor is not one this server gave (use nextCursor as it is)".into())
        })
    }
}

pub fn publisher_cursor(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id)
}

pub fn session_cursor(last: &Position) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}{}", last.session_id, last.offer_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(limit: Option<&str>, cursor: Option<String>) -> Paging {
        Paging {
            limit: limit.map(str::to_owned),
            cursor,
        }
    }

    #[test]
    fn a_session_cursor_gives_back_the_position_it_was_made_from() {
        let position = Position {
            offer_id: "S1:é/x".into(),
            session_id: SessionId::random(),
        };
        let paging = given(None, Some(session_cursor(&position)));
        assert_eq!(paging.session_cursor().unwrap(), Some(position));
        let paging = given(None, Some(publisher_cursor("acme")));
        assert_eq!(paging.publisher_cursor().unwrap().as_deref(), Some("acme"));
    }

    #[test]
    fn limits_outside_one_to_the_maximum_and_made_up_cursors_are_refused() {
        assert_eq!(given(None, None).limit().unwrap(), DEFAULT_LIMIT);
        assert_eq!(given(Some("1000"), None).limit().unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(given(Some(bad), None).limit().is_err(), "{bad}");
        }
        assert!(given(None, Some("!!".into())).session_cursor().is_err());
        assert!(given(None, Some(publisher_cursor("short"))).session_cursor().is_err());
        assert!(given(None, Some("A".repeat(10_000))).publisher_cursor().is_err());
    }
}
