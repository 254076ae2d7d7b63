//! The server's messages as a player reads them.

use serde::Deserialize;

/// A server → player message, by its action.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Ok,
    Expired,
    Terminate,
    TakeOver(String),
    Ping,
    Other(String),
}

#[derive(Deserialize)]
struct Incoming {
    action: String,
    #[serde(rename = "sessionName", default)]
    session_name: String,
}

pub fn parse_action(text: &str) -> Action {
    // The fixed messages are compared as bytes: the common case costs no parse.
    match text {
        r#"{"action":"PING"}"# => return Action::Ping,
        r#"{"action":"OK"}"# => return Action::Ok,
        _ => {}
    }
    match serde_json::from_str::<Incoming>(text) {
        Ok(m) => match m.action.as_str() {
            "PING" => Action::Ping,
            "OK" => Action::Ok,
            "EXPIRED" => Action::Expired,
            "TERMINATE" => Action::Terminate,
            "TAKE_OVER" => Action::TakeOver(m.session_name),
            other => Action::Other(other.to_owned()),
        },
        Err(_) => Action::Other(text.chars().take(60).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_actions_are_read() {
        assert_eq!(parse_action(r#"{"action":"PING"}"#), Action::Ping);
        assert_eq!(parse_action(r#"{ "action" : "OK" }"#), Action::Ok);
        assert_eq!(
            parse_action(r#"{"action":"TAKE_OVER","sessionName":"tv"}"#),
            Action::TakeOver("tv".into())
        );
        assert_eq!(parse_action(r#"{"action":"EXPIRED"}"#), Action::Expired);
        assert_eq!(parse_action("nope"), Action::Other("nope".into()));
    }
}
