//! The JSON body of an event: the same bytes in a webhook request (where they are
//! signed) and in the live stream's `data:` line. The envelope is the Standard
//! Webhooks one: `type`, `timestamp` (RFC 3339), `data`.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::domain::events::{EventKind, SessionEvent};

pub fn render(event: &SessionEvent, at: SystemTime) -> String {
    let pool = &event.pool;
    let mut data = Map::new();
    data.insert("publisherId".into(), json!(pool.publisher_id));
    data.insert("customerId".into(), json!(pool.customer_id));
    data.insert("offerId".into(), json!(pool.offer_id));
    data.insert("sessionId".into(), json!(event.session_id.map(|id| id.to_string())));
    data.insert("sessionName".into(), json!(event.session_name));
    match &event.kind {
        EventKind::Granted | EventKind::Kicked => {}
        EventKind::Refused { reason, enforced } => {
            data.insert("reason".into(), json!(reason.as_str()));
            data.insert("enforced".into(), json!(enforced));
        }
        EventKind::TakenOver { by, by_name } => {
            data.insert(
                "takenOverBy".into(),
                json!({"sessionId": by.to_string(), "sessionName": by_name}),
            );
        }
        EventKind::Ended { cause } => {
            data.insert("cause".into(), json!(cause.as_str()));
        }
    }
    let body = json!({
        "type": event.event_type().as_str(),
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "data": Value::Object(data),
    });
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ports::EndCause;
    use crate::domain::{PoolKey, SessionId};

    #[test]
    fn an_end_carries_its_cause_and_session() {
        let pool = PoolKey {
            publisher_id: "p".into(),
            customer_id: "c".into(),
            offer_id: "o".into(),
        };
        let id = SessionId::random();
        let event = SessionEvent::ended(&pool, id, Some("tv"), EndCause::PongTimeout);
        let body: Value = serde_json::from_str(&render(&event, SystemTime::UNIX_EPOCH)).unwrap_or_default();
        assert_eq!(body["type"], "session.ended");
        assert_eq!(body["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(body["data"]["cause"], "pong_timeout");
        assert_eq!(body["data"]["sessionId"], id.to_string());
        assert_eq!(body["data"]["sessionName"], "tv");
        assert_eq!(body["data"]["customerId"], "c");
    }
}
