//! A session saved across a restart, as both settings databases store it.

use crate::domain::{PoolKey, Session, SessionId, SessionState};

/// One row of `held_sessions`.
#[derive(sqlx::FromRow)]
pub(crate) struct SavedRow {
    session_id: String,
    publisher_id: String,
    customer_id: String,
    offer_id: String,
    name: String,
    state: String,
    expires_at: i64,
    created_at: i64,
}

impl SavedRow {
    /// The saved session, or `None` (logged) for a row that cannot be read.
    pub(crate) fn into_saved(self) -> Option<(PoolKey, Session)> {
        let (Some(id), Some(state)) = (SessionId::parse(&self.session_id), SessionState::parse(&self.state)) else {
            tracing::warn!(
                session = self.session_id,
                "skipping a saved session that cannot be read"
            );
            return None;
        };
        let pool = PoolKey::from_ids(&self.publisher_id, &self.customer_id, &self.offer_id);
        let session = Session {
            id,
            name: self.name,
            state,
            expires_at: self.expires_at.max(0) as u64,
            holder: None,
            created_at: self.created_at.max(0) as u64,
        };
        Some((pool, session))
    }
}

/// Writes a row as a version before the log did (an SQLite file's `held_sessions`),
/// publisher `p`, customer `c`, offer `o`, name `TV`: for the tests of the moves
/// into the log. Returns the session id written.
#[cfg(test)]
pub(crate) async fn write_old_row(db: &sqlx::SqlitePool, state: &str, created_at: i64, expires_at: i64) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO held_sessions (created_at, session_id, publisher_id, customer_id, offer_id, name, \
         state, expires_at) VALUES (?, ?, 'p', 'c', 'o', 'TV', ?, ?)",
    )
    .bind(created_at)
    .bind(&id)
    .bind(state)
    .bind(expires_at)
    .execute(db)
    .await
    .unwrap();
    id
}
