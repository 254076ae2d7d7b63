//! The protocol's messages: one JSON object with an `action` key per text frame.

use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;
use utoipa::ToSchema;

/// What a player may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
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
    /// The frame's text. The fixed messages are static: no serialising and no
    /// allocation on the hot path (a PING per session every interval).
    pub fn to_text(&self) -> Utf8Bytes {
        match self {
            Self::Ok => Utf8Bytes::from_static(r#"{"action":"OK"}"#),
            Self::Expired => Utf8Bytes::from_static(r#"{"action":"EXPIRED"}"#),
            Self::Terminate => Utf8Bytes::from_static(r#"{"action":"TERMINATE"}"#),
            Self::Ping => Utf8Bytes::from_static(r#"{"action":"PING"}"#),
            Self::TakeOver { .. } => serde_json::to_string(self).unwrap_or_default().into(),
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
            assert_eq!(m.to_text().as_str(), serde_json::to_string(&m).unwrap());
        }
        assert_eq!(
            ServerMessage::TakeOver {
                session_name: "TV \"2\""
            }
            .to_text()
            .as_str(),
            r#"{"action":"TAKE_OVER","sessionName":"TV \"2\""}"#
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn action() -> impl Strategy<Value = (&'static str, Option<ClientMessage>)> {
            prop_oneof![
                Just(("REQUESTED", Some(ClientMessage::Requested))),
                Just(("PONG", Some(ClientMessage::Pong))),
                Just(("FINISHED", Some(ClientMessage::Finished))),
                Just(("PING", None)),
                Just(("requested", None)),
                Just(("", None)),
            ]
        }

        proptest! {
            // Bounded for CI; PROPTEST_CASES raises it for a longer local run.
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever a player sends, parsing answers (never panics) and only the
            /// three player actions are ever recognised.
            #[test]
            fn any_text_parses_to_nothing_or_one_of_the_three_actions(text in ".{0,300}") {
                let parsed = ClientMessage::parse(&text);
                if let Some(message) = parsed {
                    let expected = match message {
                        ClientMessage::Requested => "REQUESTED",
                        ClientMessage::Pong => "PONG",
                        ClientMessage::Finished => "FINISHED",
                    };
                    prop_assert!(text.contains(expected), "{text:?} parsed as {message:?}");
                }
            }

            /// Arbitrary bytes that happen to be UTF-8 (frames are checked for
            /// UTF-8 before parsing) never panic the parser.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = ClientMessage::parse(text);
                }
            }

            /// An object with a known action is read whatever else it carries;
            /// anything else in `action` is not.
            #[test]
            fn the_action_decides_whatever_else_the_object_carries(
                (name, expected) in action(),
                key in "[a-z]{1,8}",
                value in prop_oneof![Just(serde_json::json!(1)), Just(serde_json::json!("x")), Just(serde_json::json!([null, {"a": 2}]))],
            ) {
                prop_assume!(key != "action");
                let mut object = serde_json::Map::new();
                object.insert(key, value);
                object.insert("action".into(), serde_json::json!(name));
                let text = serde_json::Value::Object(object).to_string();
                prop_assert_eq!(ClientMessage::parse(&text), expected);
            }

            /// Deeply nested JSON is refused, not followed down until the stack ends.
            #[test]
            fn deep_nesting_is_refused_without_overflow(depth in 100usize..20_000) {
                let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                prop_assert_eq!(ClientMessage::parse(&text), None);
            }
        }
    }
}
