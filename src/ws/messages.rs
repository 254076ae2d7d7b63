//! The protocol's messages: one JSON object with an `action` key per text frame.

use serde::{Deserialize, Serialize};

/// What a player may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "action")]
pub enum ClientMessage {
    #[serde(rename = "REQUESTED")]
    Requested,
    #[serde(rename = "PONG")]
    Pong,
    #[serde(rename = "FINISHED")]
    Finished,
}

impl ClientMessage {
    /// `None` for malformed JSON or an unknown action; both are ignored and counted.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// What the server sends: exactly these five, never anything else, because the
/// reference client treats an unknown action as a system error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action")]
pub enum ServerMessage<'a> {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "EXPIRED")]
    Expired,
    #[serde(rename = "TERMINATE")]
    Terminate,
    #[serde(rename = "TAKE_OVER")]
    TakeOver {
        #[serde(rename = "sessionName")]
        session_name: &'a str,
    },
    #[serde(rename = "PING")]
    Ping,
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        match self {
            // The fixed messages are spelled out to skip serialisation on the hot path.
            Self::Ok => r#"{"action":"OK"}"#.into(),
            Self::Expired => r#"{"action":"EXPIRED"}"#.into(),
            Self::Terminate => r#"{"action":"TERMINATE"}"#.into(),
            Self::Ping => r#"{"action":"PING"}"#.into(),
            Self::TakeOver { .. } => serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

/// Close codes (PROTOCOL 2.4).
pub mod close {
    pub const FINISHED: u16 = 1000;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_TEXT: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const TAKEN_OVER: u16 = 4001;
    pub const TERMINATED: u16 = 4002;
    pub const EXPIRED: u16 = 4003;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_read_by_action() {
        assert_eq!(
            ClientMessage::parse(r#"{"action":"REQUESTED"}"#),
            Some(ClientMessage::Requested)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"action":"PONG","extra":1}"#),
            Some(ClientMessage::Pong)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"action":"FINISHED"}"#),
            Some(ClientMessage::Finished)
        );
        assert_eq!(ClientMessage::parse(r#"{"action":"DANCE"}"#), None);
        assert_eq!(ClientMessage::parse("{not json"), None);
    }

    #[test]
    fn server_messages_are_spelled_exactly() {
        let fixed = [
            ServerMessage::Ok,
            ServerMessage::Expired,
            ServerMessage::Terminate,
            ServerMessage::Ping,
        ];
        for m in fixed {
            assert_eq!(m.to_json(), serde_json::to_string(&m).unwrap());
        }
        assert_eq!(
            ServerMessage::TakeOver {
                session_name: "TV \"2\""
            }
            .to_json(),
            r#"{"action":"TAKE_OVER","sessionName":"TV \"2\""}"#
        );
    }
}
