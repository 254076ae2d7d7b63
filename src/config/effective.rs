//! `drisc check-config`: the configuration in effect, as TOML, with its secrets redacted.
//!
//! Printed from the merged sources (defaults, file, environment) rather than from the typed
//! [`Settings`], so the output reads like the file an operator writes (durations as `"10s"`)
//! and can be given back with `--config`, and so a setting added later is printed without
//! any code here. The typed settings are loaded first all the same: a configuration that
//! would not start is refused with its message, never printed.

use std::path::Path;

use anyhow::Context;

use super::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, REDACTED, Settings, redact_url};

/// Shown instead of a published development key: it is no secret, and an operator must see
/// that it is still in use.
const DEV_KEY: &str = "[the published development key]";

impl Settings {
    /// The settings in effect for `file` and the environment, as TOML, secrets redacted.
    pub fn effective_toml(file: Option<&Path>) -> anyhow::Result<String> {
        Self::load(file)?;
        let mut table: toml::Table = Self::layered(file)
            .build()
            .context("invalid configuration")?
            .try_deserialize()
            .context("the configuration cannot be printed as TOML")?;
        redact(&mut table);
        toml::to_string_pretty(&table).context("the configuration cannot be printed as TOML")
    }
}

/// Whether a setting holds a secret, judged by its name, so that a secret setting added
/// later (named like the ones we have: `*_key`, `*secret*`, `*password*`, `*_token`) is
/// hidden without anyone remembering to list it here.
fn is_secret(key: &str) -> bool {
    key.ends_with("_key") || key.contains("secret") || key.contains("password") || key.ends_with("_token")
}

/// URLs may carry a password (`redis://:pw@host`, `?password=` for PostgreSQL).
fn is_url(key: &str) -> bool {
    key.ends_with("_url") || key.ends_with("_uri")
}

fn redact(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => redact(inner),
            // Empty says "not set" (e.g. a session secret kept in the database): no secret in it.
            toml::Value::String(s) if s.is_empty() => {}
            toml::Value::String(s) if is_secret(key) && (s == DEV_CUSTOMER_KEY || s == DEV_ADMIN_KEY) => {
                *s = DEV_KEY.into();
            }
            // Any type: the environment turns a numeric secret into an integer.
            _ if is_secret(key) => *value = toml::Value::String(REDACTED.into()),
            toml::Value::String(s) if is_url(key) => *s = redact_url(s),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed_with(file_text: &str) -> toml::Table {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("drisc.toml");
        std::fs::write(&path, file_text).expect("the file is written");
        let printed = Settings::effective_toml(Some(&path)).expect("the configuration is printed");
        assert!(!printed.contains("s3cret"), "a secret is printed:\n{printed}");
        printed.parse().expect("the printed configuration is TOML")
    }

    #[test]
    fn the_settings_in_effect_are_printed_as_toml_with_their_secrets_redacted() {
        let table = printed_with(
            r#"
            [server]
            port = 9123
            [liveness]
            pong_timeout = "40s"
            [auth]
            customer_key = "customer-s3cret"
            session_secret = "session-s3cret"
            [storage]
            redis_url = "redis://:redis-s3cret@10.0.0.5:6379/"
            postgres_url = "postgres://drisc:pg-s3cret@10.0.0.6/drisc"
            "#,
        );
        let get = |section: &str, key: &str| table[section][key].clone();
        assert_eq!(get("server", "port").as_integer(), Some(9123), "the file's value");
        assert_eq!(get("liveness", "pong_timeout").as_str(), Some("40s"), "as written");
        assert_eq!(get("liveness", "ping_interval").as_str(), Some("10s"), "a default");
        assert_eq!(get("auth", "customer_key").as_str(), Some(REDACTED));
        assert_eq!(get("auth", "session_secret").as_str(), Some(REDACTED));
        assert_eq!(
            get("auth", "admin_key").as_str(),
            Some(DEV_KEY),
            "the development key is named"
        );
        assert_eq!(
            get("storage", "redis_url").as_str(),
            Some("redis://:REDACTED@10.0.0.5:6379/")
        );
        assert_eq!(
            get("auth", "customer_key_file").as_str(),
            Some(""),
            "a path is no secret"
        );
        for section in [
            "server",
            "storage",
            "cluster",
            "auth",
            "liveness",
            "publishers",
            "limits",
            "log",
        ] {
            assert!(table.contains_key(section), "section {section} is printed");
        }
    }

    #[test]
    fn an_invalid_configuration_is_refused_not_printed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("drisc.toml");
        std::fs::write(&path, "[liveness]\npong_timeout = \"1s\"\n").expect("the file is written");
        let err = Settings::effective_toml(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("liveness.pong_timeout"), "{err}");
    }

    #[test]
    fn a_secret_is_hidden_whatever_its_type_and_an_empty_one_shows_it_is_unset() {
        let mut table: toml::Table = r#"
            [auth]
            admin_key = 12345
            session_secret = ""
            [future]
            api_token = "t0ken"
            webhook_url = "https://user:pw@hooks.example.com/x"
            "#
        .parse()
        .expect("TOML");
        redact(&mut table);
        assert_eq!(table["auth"]["admin_key"].as_str(), Some(REDACTED));
        assert_eq!(table["auth"]["session_secret"].as_str(), Some(""));
        assert_eq!(table["future"]["api_token"].as_str(), Some(REDACTED));
        assert_eq!(
            table["future"]["webhook_url"].as_str(),
            Some("https://user:REDACTED@hooks.example.com/x")
        );
    }
}
