//! An operator's view of one customer's sessions, page by page.
//!
//! A customer holds sessions in a handful of pools (at most
//! `publishers.max_pools_per_customer`), so a store gathers them from the
//! customer's own pools, never from a walk over every pool. Pages follow the
//! order (offer id, session id): both are fixed for a session's life, so a walk
//! with the cursor meets every session that stays held exactly once, however
//! many come and go meanwhile.

use super::session::{Customer, PoolKey, Session, SessionId};

/// Where a page ended: the last session it showed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub offer_id: String,
    pub session_id: SessionId,
}

impl Position {
    pub fn of(pool: &PoolKey, session: &Session) -> Self {
        Self {
            offer_id: pool.offer_id().to_owned(),
            session_id: session.id,
        }
    }
}

/// Which of a customer's sessions an operator asks for.
#[derive(Debug, Clone)]
pub struct SessionQuery {
    pub customer: Customer,
    /// One offer's pool only; all of the customer's pools if `None`.
    pub offer_id: Option<String>,
    /// Only the sessions after this one.
    pub after: Option<Position>,
    /// At most this many (at least one is always asked for).
    pub limit: usize,
}

impl SessionQuery {
    /// Whether the pool of offer `offer_id` may hold a session of the page: lets
    /// a store skip the pools before the cursor without reading them.
    pub fn wants_pool(&self, offer_id: &str) -> bool {
        match (&self.offer_id, &self.after) {
            (Some(only), _) if only != offer_id => false,
            (_, Some(after)) => offer_id >= after.offer_id.as_str(),
            _ => true,
        }
    }

    /// The page out of the sessions found in the pools it wants: sorted, those up
    /// to the cursor dropped, cut at the limit.
    pub fn page(&self, mut found: Vec<(PoolKey, Session)>) -> SessionPage {
        found.retain(|(pool, s)| {
            self.wants_pool(pool.offer_id()) && self.after.as_ref().is_none_or(|after| Position::of(pool, s) > *after)
        });
        found.sort_by(|(a, x), (b, y)| (a.offer_id(), x.id).cmp(&(b.offer_id(), y.id)));
        let limit = self.limit.max(1);
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(pool, s)| Position::of(pool, s))
        } else {
            None
        };
        SessionPage { sessions: found, next }
    }
}

/// One page of a customer's sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionPage {
    pub sessions: Vec<(PoolKey, Session)>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Position>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionState;

    fn held(offer: &str) -> (PoolKey, Session) {
        let pool = PoolKey::from_ids("p", "c", offer);
        let session = Session {
            id: SessionId::random(),
            name: "tv".into(),
            state: SessionState::Live,
            expires_at: 1,
            holder: None,
            created_at: 0,
        };
        (pool, session)
    }

    fn query(limit: usize, after: Option<Position>) -> SessionQuery {
        SessionQuery {
            customer: Customer {
                publisher_id: "p".into(),
                customer_id: "c".into(),
            },
            offer_id: None,
            after,
            limit,
        }
    }

    #[test]
    fn pages_walk_every_session_once_in_offer_then_id_order() {
        let all: Vec<_> = ["b", "a", "b", "c", "a"].into_iter().map(held).collect();
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..10 {
            let page = query(2, after).page(all.clone());
            assert!(page.sessions.len() <= 2);
            seen.extend(page.sessions.iter().map(|(p, s)| Position::of(p, s)));
            after = page.next;
            if after.is_none() {
                break;
            }
        }
        let mut expected: Vec<_> = all.iter().map(|(p, s)| Position::of(p, s)).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_that_ends_the_walk_has_no_next_cursor() {
        let all: Vec<_> = ["a", "b"].into_iter().map(held).collect();
        assert!(query(2, None).page(all.clone()).next.is_none());
        assert!(query(1, None).page(all).next.is_some());
    }

    #[test]
    fn pools_before_the_cursor_or_of_another_offer_are_not_wanted() {
        let after = Position {
            offer_id: "m".into(),
            session_id: SessionId::random(),
        };
        let q = query(5, Some(after));
        assert!(!q.wants_pool("a"));
        assert!(q.wants_pool("m"));
        assert!(q.wants_pool("z"));
        let only = SessionQuery {
            offer_id: Some("x".into()),
            ..query(5, None)
        };
        assert!(only.wants_pool("x"));
        assert!(!only.wants_pool("y"));
    }
}
